package process

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/runtime"
	"github.com/berthhq/berth/runtime/runtimetest"
	"golang.org/x/sys/unix"
)

// helperEnv makes the test binary act as a Berth that starts one backend
// and exits without stopping it (see TestRuntime_RecoverOrphan).
const (
	helperEnv = "BERTH_PROCESS_TEST_START"
	forkedEnv = "BERTH_PROCESS_TEST_FORKED"
)

func TestMain(m *testing.M) {
	if req := os.Getenv(helperEnv); req != "" {
		os.Exit(startAndExit(req))
	}
	if os.Getenv(forkedEnv) != "" {
		// A stand-in for a child Berth forked that has not exec'd yet: it
		// runs Berth's program (here, the test binary).
		time.Sleep(time.Hour)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

type helperRequest struct {
	Dir  string
	Spec runtime.Spec
}

func startAndExit(req string) int {
	var hr helperRequest
	if err := json.Unmarshal([]byte(req), &hr); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	r, err := New(Config{Dir: hr.Dir})
	if err == nil {
		var h *runtime.Handle
		if h, err = r.Start(context.Background(), hr.Spec); err == nil {
			err = json.NewEncoder(os.Stdout).Encode(h)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func harness(bin string, cfg Config) runtimetest.Harness {
	return runtimetest.Harness{
		New: func(t *testing.T) runtime.Runtime { return newRuntime(t, cfg) },
		Spec: func(t *testing.T, id string, env map[string]string) runtime.Spec {
			return testSpec(t, bin, id, env)
		},
		Restart: func(t *testing.T, old runtime.Runtime) runtime.Runtime {
			o := old.(*Runtime)
			return newRuntime(t, Config{Dir: o.dir, CgroupDir: o.cgroupDir})
		},
		HostPIDs: true,
	}
}

func TestRuntime_Conformance(t *testing.T) {
	bin := runtimetest.BuildTestBackend(t)
	runtimetest.Run(t, harness(bin, Config{}))
}

func TestRuntime_ConformanceCgroup(t *testing.T) {
	bin := runtimetest.BuildTestBackend(t)
	runtimetest.Run(t, harness(bin, Config{CgroupDir: testCgroup(t)}))
}

func newRuntime(t *testing.T, cfg Config) *Runtime {
	t.Helper()
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	// Not t.Log: tails may log after the test ends.
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func testSpec(t *testing.T, bin, id string, env map[string]string) runtime.Spec {
	t.Helper()
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return runtime.Spec{
		BackendID: id,
		Spawn:     berth.SpawnConfig{Command: []string{bin}},
		Env:       runtimetest.Env(id, port, env),
		Port:      port,
	}
}

// start starts sp on r and stops and removes it when the test ends.
func start(t *testing.T, r *Runtime, sp runtime.Spec) *runtime.Handle {
	t.Helper()
	h, err := r.Start(context.Background(), sp)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		r.Stop(context.Background(), h, "", 0)
		r.Cleanup(context.Background(), h)
	})
	return h
}

// getJSON polls path on addr until it answers and decodes the answer into v.
func getJSON(t *testing.T, addr, path string, v any) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for d := time.Millisecond; ; d = min(2*d, 100*time.Millisecond) {
		resp, err := http.Get("http://" + addr + path)
		if err == nil {
			defer resp.Body.Close()
			if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
				t.Fatalf("GET %s: %v", path, err)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %v", path, err)
		}
		time.Sleep(d)
	}
}

func wait(t *testing.T, r *Runtime, h *runtime.Handle) runtime.Exit {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e, err := r.Wait(ctx, h)
	if err != nil {
		t.Fatalf("Wait: %v", err)
	}
	return e
}

func handleState(t *testing.T, h *runtime.Handle) state {
	t.Helper()
	st, err := decodeState(h)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestRuntime_ExpandsArgs(t *testing.T) {
	t.Parallel()
	bin := runtimetest.BuildTestBackend(t)
	wd, _ := os.Getwd()
	rel, err := filepath.Rel(wd, bin)
	if err != nil {
		t.Fatal(err)
	}
	r := newRuntime(t, Config{})
	sp := testSpec(t, bin, "bk_args", nil)
	sp.Spawn.Command = []string{"./" + rel, "port=${PORT}", "id=$BERTH_BACKEND_ID", "dollar=$$", "unknown=${NOPE}"}
	h := start(t, r, sp)
	var got []string
	getJSON(t, h.Addr, "/args", &got)
	want := []string{"./" + rel, "port=" + sp.Env["PORT"], "id=bk_args", "dollar=$", "unknown="}
	if !slices.Equal(got, want) {
		t.Errorf("args = %q, want %q (a relative program resolved against Berth's working directory)", got, want)
	}
}

func TestRuntime_Environment(t *testing.T) {
	bin := runtimetest.BuildTestBackend(t)
	t.Setenv("BERTH_TEST_LEAK", "1")
	r := newRuntime(t, Config{})
	sp := testSpec(t, bin, "bk_env", nil)
	sp.StateDir = t.TempDir()
	h := start(t, r, sp)
	var env map[string]string
	getJSON(t, h.Addr, "/", &env)
	base := filepath.Join(r.dir, "bk_env")
	for k, want := range map[string]string{
		"HOME":            filepath.Join(base, "work"),
		"TMPDIR":          filepath.Join(base, "work"),
		"BERTH_STATE_DIR": sp.StateDir,
		"PORT":            sp.Env["PORT"],
		"BERTH_TEST_LEAK": "",
	} {
		if env[k] != want {
			t.Errorf("%s = %q, want %q", k, env[k], want)
		}
	}
	if env["PATH"] == "" {
		t.Error("PATH is empty")
	}
}

func TestRuntime_LimitsOpenFiles(t *testing.T) {
	t.Parallel()
	bin := runtimetest.BuildTestBackend(t)
	r := newRuntime(t, Config{})
	h := start(t, r, testSpec(t, bin, "bk_nofile", nil))
	var own unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &own); err != nil {
		t.Fatal(err)
	}
	want := strconv.FormatUint(min(own.Max, maxOpenFiles), 10)
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", handleState(t, h).PID))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Max open files"); ok {
			f := strings.Fields(rest)
			if f[0] != want || f[1] != want {
				t.Errorf("open files limit soft %s hard %s, want %s", f[0], f[1], want)
			}
			return
		}
	}
	t.Fatalf("no open files limit in\n%s", b)
}

// A handle whose pid now names another process (same pid, other start
// time) must be treated as gone, and that process left alone.
func TestRuntime_PIDReuse(t *testing.T) {
	t.Parallel()
	bin := runtimetest.BuildTestBackend(t)
	port, _ := FreePort()
	other := exec.Command(bin)
	other.Env = []string{"PORT=" + strconv.Itoa(port)}
	other.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Process.Kill(); other.Wait() })
	pid := other.Process.Pid
	s, err := readStat(pid)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(state{PID: pid, PGID: pid, Start: s.start + 1, Log: filepath.Join(t.TempDir(), logFile)})
	h := &runtime.Handle{BackendID: "bk_reused", Runtime: Name, State: raw}

	r := newRuntime(t, Config{})
	ctx := context.Background()
	if err := r.Recover(ctx, h, io.Discard); !errors.Is(err, runtime.ErrGone) {
		t.Errorf("Recover = %v, want ErrGone", err)
	}
	if _, err := r.Wait(ctx, h); !errors.Is(err, runtime.ErrGone) {
		t.Errorf("Wait = %v, want ErrGone", err)
	}
	if err := r.Stop(ctx, h, "", time.Second); err != nil {
		t.Errorf("Stop = %v", err)
	}
	if err := r.Stop(ctx, h, "", 0); err != nil {
		t.Errorf("Stop = %v", err)
	}
	if err := r.Cleanup(ctx, h); err != nil {
		t.Errorf("Cleanup = %v", err)
	}
	if !alive(pid, s.start) {
		t.Fatal("the runtime signalled a process whose pid merely matched the handle's")
	}
}

// A backend outlives the Berth that started it; a new Berth recovers it,
// its earlier output included, and stops it.
// startInHelper starts spec from another process, as a Berth that then
// exited (or was killed) would have, and returns the handle it made.
func startInHelper(t *testing.T, dir string, spec runtime.Spec) runtime.Handle {
	t.Helper()
	req, err := json.Marshal(helperRequest{Dir: dir, Spec: spec})
	if err != nil {
		// An empty request would make the helper run every test again,
		// and each of them another helper.
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"="+string(req), "GORACE=atexit_sleep_ms=0")
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helper Berth: %v", err)
	}
	var h runtime.Handle
	if err := json.Unmarshal(out, &h); err != nil {
		t.Fatal(err)
	}
	return h
}

func TestRuntime_RecoverOrphan(t *testing.T) {
	t.Parallel()
	bin := runtimetest.BuildTestBackend(t)
	dir := t.TempDir()
	h := startInHelper(t, dir, testSpec(t, bin, "bk_orphan", map[string]string{"TB_LOG_LINES": "3"}))

	r := newRuntime(t, Config{Dir: dir})
	logs := new(syncBuffer)
	ctx := context.Background()
	if err := r.Recover(ctx, &h, logs); err != nil {
		t.Fatalf("Recover: %v", err)
	}
	t.Cleanup(func() { r.Stop(ctx, &h, "", 0); r.Cleanup(ctx, &h) })
	var env map[string]string
	getJSON(t, h.Addr, "/", &env)
	if err := r.Stop(ctx, &h, "", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	e := wait(t, r, &h)
	if e.Code != -1 || !errors.Is(e.Err, errUnknownExit) {
		t.Errorf("Wait = %+v, want code -1 and errUnknownExit", e)
	}
	for _, want := range []string{"tb stdout 3", "tb stderr 3", "got SIGTERM"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("recovered logs lack %q:\n%s", want, logs)
		}
	}
	if err := r.Recover(ctx, &h, io.Discard); !errors.Is(err, runtime.ErrGone) {
		t.Errorf("Recover after Stop = %v, want ErrGone", err)
	}
}

// A backend that writes much more than MaxLogBytes loses no output, and its
// log file takes no more than about MaxLogBytes on disk.
func TestRuntime_LogBound(t *testing.T) {
	t.Parallel()
	bin := runtimetest.BuildTestBackend(t)
	const max, lines = 64 << 10, 20000
	r := newRuntime(t, Config{MaxLogBytes: max})
	sp := testSpec(t, bin, "bk_chatty", map[string]string{"TB_LOG_LINES": strconv.Itoa(lines), "TB_EXIT_AFTER_MS": "1"})
	logs := new(syncBuffer)
	sp.Logs = logs
	h := start(t, r, sp)
	wait(t, r, h)

	next := map[string]int{"stdout": 1, "stderr": 1}
	for _, line := range strings.Split(logs.String(), "\n") {
		var stream string
		var n int
		if _, err := fmt.Sscanf(line, "tb %s %d", &stream, &n); err != nil {
			continue
		}
		if n != next[stream] {
			t.Fatalf("%s line %d after line %d", stream, n, next[stream]-1)
		}
		next[stream]++
	}
	if next["stdout"] != lines+1 || next["stderr"] != lines+1 {
		t.Fatalf("got %d stdout and %d stderr lines, want %d each", next["stdout"]-1, next["stderr"]-1, lines)
	}
	fi, err := os.Stat(handleState(t, h).Log)
	if err != nil {
		t.Fatal(err)
	}
	disk := fi.Sys().(*syscall.Stat_t).Blocks * 512
	if disk > max+256<<10 || fi.Size() < 4*max {
		t.Errorf("log file: %d bytes written, %d on disk; want more than %d written, at most %d on disk", fi.Size(), disk, 4*max, max+256<<10)
	}
}

func TestTail_TruncateFallback(t *testing.T) {
	t.Parallel()
	const max = 1024
	path := filepath.Join(t.TempDir(), logFile)
	w, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	got := new(syncBuffer)
	tl, err := newTail(path, got, max, new(watcher), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	tl.punch = false
	go tl.run()
	// Truncating loses a write racing with it, so the writer writes whole
	// batches and, once the tail must truncate, waits until it has.
	var want bytes.Buffer
	sinceTruncate := 0
	for i := range 50 {
		var batch strings.Builder
		for j := range 10 {
			fmt.Fprintf(&batch, "line %d\n", 10*i+j)
		}
		w.WriteString(batch.String())
		want.WriteString(batch.String())
		sinceTruncate += batch.Len()
		got.waitLen(t, want.Len())
		if sinceTruncate < max {
			continue
		}
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
			if fi, err := w.Stat(); err == nil && fi.Size() == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the tail did not truncate the log after %d bytes", sinceTruncate)
			}
		}
		sinceTruncate = 0
	}
	tl.close()
	if got.String() != want.String() {
		t.Errorf("tail copied %d bytes, want the %d written", got.Len(), want.Len())
	}
}

// A tail started over after a restart begins at the first byte not yet
// freed: no NUL bytes from the hole, no loss.
func TestTail_ResumeAfterPunch(t *testing.T) {
	t.Parallel()
	const max = 128 << 10
	path := filepath.Join(t.TempDir(), logFile)
	line := strings.Repeat("x", 99) + "\n"
	if err := os.WriteFile(path, []byte(strings.Repeat(line, 5000)), 0o600); err != nil {
		t.Fatal(err)
	}
	first := new(syncBuffer)
	tl, err := startTail(path, first, max, new(watcher), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	tl.close()
	if first.Len() != 5000*len(line) || !tl.punch {
		t.Fatalf("first tail copied %d bytes (punch %v), want %d", first.Len(), tl.punch, 5000*len(line))
	}
	again := new(syncBuffer)
	tl, err = startTail(path, again, max, new(watcher), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	tl.close()
	if n := again.Len(); n == 0 || n > max+64<<10 || strings.ContainsRune(again.String(), 0) {
		t.Errorf("second tail copied %d bytes (NUL: %v), want the unfreed tail of the file", n, strings.ContainsRune(again.String(), 0))
	}
}

func TestRuntime_CgroupMemory(t *testing.T) {
	bin := runtimetest.BuildTestBackend(t)
	cg := testCgroup(t)
	if b, _ := os.ReadFile(filepath.Join(cg, "cgroup.controllers")); !slices.Contains(strings.Fields(string(b)), "memory") {
		t.Skipf("the memory controller is not available in %s (cgroup v1 hybrid?): run on a host with the unified cgroup v2 hierarchy", cg)
	}
	if err := writeCgroup(cg, "cgroup.subtree_control", "+memory"); err != nil {
		t.Skipf("cannot delegate the memory controller in %s: %v", cg, err)
	}
	r := newRuntime(t, Config{CgroupDir: cg})
	sp := testSpec(t, bin, "bk_oom", map[string]string{"TB_ALLOC_MB": "128"})
	sp.Spawn.Resources.MemoryMB = 32
	h := start(t, r, sp)
	if e := wait(t, r, h); !e.OOMKilled {
		t.Errorf("Wait = %+v, want OOMKilled", e)
	}
}

func TestRuntime_CgroupPlacement(t *testing.T) {
	bin := runtimetest.BuildTestBackend(t)
	cg := testCgroup(t)
	r := newRuntime(t, Config{CgroupDir: cg})
	h := start(t, r, testSpec(t, bin, "bk_cg", nil))
	st := handleState(t, h)
	if got, want := st.Cgroup, filepath.Join(cg, "bk_cg"); got != want {
		t.Errorf("state cgroup = %q, want %q", got, want)
	}
	if pids, err := cgroupProcs(st.Cgroup); err != nil || !slices.Contains(pids, st.PID) {
		t.Errorf("cgroup.procs = %v (%v), want %d in it", pids, err, st.PID)
	}
	ctx := context.Background()
	if err := r.Stop(ctx, h, "", 0); err != nil {
		t.Fatal(err)
	}
	wait(t, r, h)
	if err := r.Cleanup(ctx, h); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(st.Cgroup); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cgroup after Cleanup: %v, want it removed", err)
	}
}

// testCgroup returns a fresh, empty cgroup v2 directory for the test.
func testCgroup(t *testing.T) string {
	t.Helper()
	for _, root := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		if checkCgroupDir(root) != nil {
			continue
		}
		dir := filepath.Join(root, fmt.Sprintf("berth-test-%d-%s", os.Getpid(), strings.ReplaceAll(t.Name(), "/", "_")))
		if err := os.Mkdir(dir, 0o755); err != nil {
			continue
		}
		t.Cleanup(func() {
			if err := os.Remove(dir); err != nil {
				t.Errorf("remove test cgroup: %v", err)
			}
		})
		return dir
	}
	t.Skip("no writable cgroup v2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified: run the tests as root on a host with cgroup v2")
	return ""
}

func TestFreePort(t *testing.T) {
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		t.Fatalf("listen on the free port %d: %v", port, err)
	}
	// A port a server listens on, on loopback or on every address, is not
	// free.
	if canBind(port) {
		t.Errorf("port %d, listened on 127.0.0.1, counts as free", port)
	}
	l.Close()
	l, err = net.Listen("tcp", ":"+strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if canBind(port) {
		t.Errorf("port %d, listened on every address, counts as free", port)
	}
}

func TestRuntime_StartErrors(t *testing.T) {
	t.Parallel()
	r := newRuntime(t, Config{})
	ctx := context.Background()
	for name, sp := range map[string]runtime.Spec{
		"no command":     {BackendID: "bk_a", Port: 1},
		"no port":        {BackendID: "bk_b", Spawn: berth.SpawnConfig{Command: []string{"true"}}},
		"bad id":         {BackendID: "../x", Port: 1, Spawn: berth.SpawnConfig{Command: []string{"true"}}},
		"missing binary": {BackendID: "bk_c", Port: 1, Spawn: berth.SpawnConfig{Command: []string{"/nonexistent/berth-test"}}},
	} {
		if h, err := r.Start(ctx, sp); err == nil {
			t.Errorf("%s: Start = %+v, want an error", name, h)
		}
	}
	if ents, _ := os.ReadDir(r.dir); len(ents) != 0 {
		t.Errorf("failed starts left %d entries in Dir", len(ents))
	}
}

// syncBuffer is a Spec.Logs that tests read while the tail writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (s *syncBuffer) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Len()
}

func (s *syncBuffer) waitLen(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for s.Len() < n {
		if time.Now().After(deadline) {
			t.Fatalf("tail copied %d bytes, want %d", s.Len(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// Tails share one inotify instance, which exists only while one watches.
func TestWatcher_Shared(t *testing.T) {
	t.Parallel()
	var w watcher
	dir := t.TempDir()
	var unwatch []func()
	var wakes []<-chan struct{}
	for i := range 3 {
		path := filepath.Join(dir, strconv.Itoa(i))
		if err := os.WriteFile(path, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		c, stop, err := w.watch(path)
		if err != nil {
			t.Fatal(err)
		}
		wakes, unwatch = append(wakes, c), append(unwatch, stop)
	}
	if got := len(w.subs); got != 3 {
		t.Fatalf("%d watches, want 3", got)
	}
	if err := os.WriteFile(filepath.Join(dir, "1"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	select {
	case <-wakes[1]:
	case <-time.After(10 * time.Second):
		t.Fatal("no wake-up for a write")
	}
	select {
	case <-wakes[0]:
		t.Error("a wake-up for a file not written")
	default:
	}
	for _, stop := range unwatch {
		stop()
	}
	if w.f != nil {
		t.Error("the inotify instance outlived its last watch")
	}
}

func TestRuntime_StartTwice(t *testing.T) {
	t.Parallel()
	bin := runtimetest.BuildTestBackend(t)
	r := newRuntime(t, Config{})
	sp := testSpec(t, bin, "bk_twice", nil)
	start(t, r, sp)
	if _, err := r.Start(context.Background(), sp); err == nil {
		t.Error("a second Start of a running backend succeeded")
	}
}

// Cleanup parks a new directory for the next Start, which uses it; what a
// backend left in its directory never reaches the next one.
func TestRuntime_SpareDirectories(t *testing.T) {
	t.Parallel()
	bin := runtimetest.BuildTestBackend(t)
	r := newRuntime(t, Config{})
	ctx := context.Background()
	spares := func() int {
		ms, _ := filepath.Glob(filepath.Join(r.dir, sparePrefix+"*"))
		return len(ms)
	}

	h := start(t, r, testSpec(t, bin, "bk_first", nil))
	var env map[string]string
	getJSON(t, h.Addr, "/", &env) // up, and its output written
	if err := os.WriteFile(filepath.Join(env["HOME"], "left-behind"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	// What a process of bk_first that escaped its group would still hold:
	// its output log and its working directory.
	oldLog, err := os.OpenFile(handleState(t, h).Log, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer oldLog.Close()
	oldWork, err := os.Open(env["HOME"])
	if err != nil {
		t.Fatal(err)
	}
	defer oldWork.Close()
	if err := r.Stop(ctx, h, "", 0); err != nil {
		t.Fatal(err)
	}
	if err := r.Cleanup(ctx, h); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(r.dir, "bk_first")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("bk_first's directory after Cleanup: %v, want it gone", err)
	}
	if n := spares(); n != 1 {
		t.Fatalf("%d spare directories after a Cleanup, want 1", n)
	}
	if hs, err := r.List(ctx); err != nil || len(hs) != 0 {
		t.Errorf("List = %v, %v; want nothing (a spare is no backend)", hs, err)
	}

	h = start(t, r, testSpec(t, bin, "bk_second", nil))
	getJSON(t, h.Addr, "/", &env)
	if n := spares(); n != 0 {
		t.Errorf("%d spare directories after a Start, want it taken", n)
	}
	ents, err := os.ReadDir(env["HOME"])
	if err != nil || len(ents) != 0 {
		t.Errorf("bk_second's work directory holds %v (%v); want it empty", ents, err)
	}
	// Nothing bk_first's leftovers write reaches bk_second.
	oldLog.WriteString("from bk_first\n")
	if fd, err := unix.Openat(int(oldWork.Fd()), "from-bk_first", unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o600); err == nil {
		unix.Close(fd)
	}
	if ents, _ := os.ReadDir(env["HOME"]); len(ents) != 0 {
		t.Errorf("bk_second's work directory holds %v, written through bk_first's", ents)
	}
	if b, err := os.ReadFile(handleState(t, h).Log); err != nil || strings.Contains(string(b), "bk_first") {
		t.Errorf("bk_second's output log: %q, %v; want nothing of bk_first's", b, err)
	}
	if hs, err := r.List(ctx); err != nil || len(hs) != 1 || hs[0].BackendID != "bk_second" {
		t.Errorf("List = %v, %v; want bk_second", hs, err)
	}

	// Once nothing holds a log, it may be reused: emptied first.
	second := handleState(t, h).Log
	secondLog, err := os.ReadFile(second)
	if err != nil || len(secondLog) == 0 {
		t.Fatalf("bk_second's output log: %q, %v; want its output", secondLog, err)
	}
	var secondIno uint64
	if fi, err := os.Stat(second); err == nil {
		secondIno = fi.Sys().(*syscall.Stat_t).Ino
	}
	if err := r.Stop(ctx, h, "", 0); err != nil {
		t.Fatal(err)
	}
	if err := r.Cleanup(ctx, h); err != nil {
		t.Fatal(err)
	}
	h = start(t, r, testSpec(t, bin, "bk_third", nil))
	getJSON(t, h.Addr, "/", &env)
	third := handleState(t, h).Log
	if fi, err := os.Stat(third); err == nil {
		t.Logf("output log reused: %v", fi.Sys().(*syscall.Stat_t).Ino == secondIno)
	}
	if b, err := os.ReadFile(third); err != nil || bytes.Contains(b, secondLog) {
		t.Errorf("bk_third's output log: %q, %v; want nothing of bk_second's %q", b, err, secondLog)
	}

	// A new Runtime on the same Dir drops spares it did not make.
	if err := r.Stop(ctx, h, "", 0); err != nil {
		t.Fatal(err)
	}
	if err := r.Cleanup(ctx, h); err != nil {
		t.Fatal(err)
	}
	r = newRuntime(t, Config{Dir: r.dir})
	if n := spares(); n != 0 {
		t.Errorf("%d spare directories after New, want none", n)
	}
}

// TestRuntime_CloseRemovesSpares: a stopped Berth leaves no spare
// directory, also for a backend cleaned up after Close.
func TestRuntime_CloseRemovesSpares(t *testing.T) {
	t.Parallel()
	bin := runtimetest.BuildTestBackend(t)
	r := newRuntime(t, Config{})
	ctx := context.Background()
	spares := func() []string {
		ms, _ := filepath.Glob(filepath.Join(r.dir, sparePrefix+"*"))
		return ms
	}
	stop := func(h *runtime.Handle) {
		t.Helper()
		if err := r.Stop(ctx, h, "", 0); err != nil {
			t.Fatal(err)
		}
		if err := r.Cleanup(ctx, h); err != nil {
			t.Fatal(err)
		}
	}
	one := start(t, r, testSpec(t, bin, "bk_one", nil))
	late := start(t, r, testSpec(t, bin, "bk_late", nil))
	stop(one)
	if len(spares()) == 0 {
		t.Fatal("no spare directory after a Cleanup; this test needs one")
	}
	if err := r.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if s := spares(); len(s) != 0 {
		t.Errorf("spare directories after Close: %v", s)
	}
	stop(late)
	ents, _ := os.ReadDir(r.dir)
	if len(ents) != 0 {
		t.Errorf("%s after Close and the last Cleanup holds %v, want nothing", r.dir, ents)
	}
}

// A handle is rewritten in place, over a spare's last one; List takes a
// handle naming another backend for one still starting, and reads the
// first JSON value of a file whose cut a crash prevented.
func TestRuntime_HandleInPlace(t *testing.T) {
	t.Parallel()
	r := newRuntime(t, Config{})
	ctx := context.Background()
	handle := func(id string) *runtime.Handle {
		raw, _ := json.Marshal(state{PID: 4242, PGID: 4242, Start: 7, Log: filepath.Join(r.dir, id, logFile)})
		return &runtime.Handle{BackendID: id, Runtime: Name, Addr: "127.0.0.1:1", State: raw}
	}
	write := func(id string, h *runtime.Handle) string {
		dir := filepath.Join(r.dir, id)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, handleFile)
		if err := writeHandle(path, h); err != nil {
			t.Fatal(err)
		}
		return path
	}

	// A spare that held bk_long_previous_backend_id, taken by bk_new.
	path := write("bk_new", handle("bk_long_previous_backend_id"))
	if hs, err := r.List(ctx); err != nil || len(hs) != 0 {
		t.Errorf("List = %v, %v; want nothing (a spare's last handle is no backend)", hs, err)
	}
	want, _ := json.Marshal(handle("bk_new"))
	write("bk_new", handle("bk_new"))
	if b, err := os.ReadFile(path); err != nil || !bytes.Equal(b, want) {
		t.Errorf("handle file after a shorter rewrite: %q, %v; want exactly %q", b, err, want)
	}
	if hs, err := r.List(ctx); err != nil || len(hs) != 1 || hs[0].BackendID != "bk_new" || hs[0].Addr != "127.0.0.1:1" {
		t.Errorf("List = %v, %v; want bk_new", hs, err)
	}

	// Written, not yet cut: the old handle's tail follows the new one.
	if err := os.WriteFile(path, append(want, `"previous_backend_id","runtime":"process"}`...), 0o600); err != nil {
		t.Fatal(err)
	}
	if hs, err := r.List(ctx); err != nil || len(hs) != 1 || hs[0].BackendID != "bk_new" {
		t.Errorf("List with a stale tail = %v, %v; want bk_new", hs, err)
	}
}

// startIn starts program in its own process group with working directory
// dir and only env, reaped once it is killed, and killed when the test ends.
func startIn(t *testing.T, program, dir string, env ...string) int {
	t.Helper()
	cmd := exec.Command(program)
	cmd.Dir = dir
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	go cmd.Wait()
	t.Cleanup(func() { unix.Kill(-pid, unix.SIGKILL) })
	return pid
}

// A Berth killed between a start and the write of its handle leaves a
// process group that no handle names; a restarted runtime's List still finds
// it by its backend id, with the address Start would have recorded, and
// Stop removes it.
func TestRuntime_ListFindsUnrecordedStart(t *testing.T) {
	t.Parallel()
	bin := runtimetest.BuildTestBackend(t)
	ctx := context.Background()
	startElsewhere := func(t *testing.T, dir, id string) runtime.Handle {
		return startInHelper(t, dir, testSpec(t, bin, id, nil))
	}
	findAndStop := func(t *testing.T, r *Runtime, want runtime.Handle, pid int) {
		t.Helper()
		hs, err := r.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var got *runtime.Handle
		for _, h := range hs {
			if h.BackendID == want.BackendID {
				got = h
			}
		}
		if got == nil {
			t.Fatalf("List = %v, want a handle for %s, whose process %d runs without a handle file", hs, want.BackendID, pid)
		}
		if st := handleState(t, got); st.PID != pid || st.PGID != pid {
			t.Errorf("found pid %d group %d, want %d", st.PID, st.PGID, pid)
		}
		if want.Addr != "" && got.Addr != want.Addr {
			t.Errorf("found address %q, want %q", got.Addr, want.Addr)
		}
		if err := r.Stop(ctx, got, "", 0); err != nil {
			t.Fatalf("Stop: %v", err)
		}
		if s, err := readStat(pid); err == nil && s.running() {
			t.Errorf("process %d still runs after Stop", pid)
		}
		if err := r.Cleanup(ctx, got); err != nil {
			t.Errorf("Cleanup: %v", err)
		}
	}

	t.Run("no handle file", func(t *testing.T) {
		dir := t.TempDir()
		h := startElsewhere(t, dir, "bk_nohandle")
		pid := handleState(t, &h).PID
		t.Cleanup(func() { unix.Kill(-pid, unix.SIGKILL) })
		os.Remove(filepath.Join(dir, h.BackendID, handleFile))
		findAndStop(t, newRuntime(t, Config{Dir: dir}), h, pid)
	})
	t.Run("a spare's old handle", func(t *testing.T) {
		dir := t.TempDir()
		h := startElsewhere(t, dir, "bk_sparehandle")
		pid := handleState(t, &h).PID
		t.Cleanup(func() { unix.Kill(-pid, unix.SIGKILL) })
		old := h
		old.BackendID = "bk_previous"
		if err := writeHandle(filepath.Join(dir, h.BackendID, handleFile), &old); err != nil {
			t.Fatal(err)
		}
		findAndStop(t, newRuntime(t, Config{Dir: dir}), h, pid)
	})
	t.Run("before exec", func(t *testing.T) {
		// Forked and in its working directory, but not yet exec'd: the
		// environment is still Berth's, without BERTH_BACKEND_ID, and it
		// runs Berth's own program.
		dir := t.TempDir()
		work := filepath.Join(dir, "bk_preexec", "work")
		if err := os.MkdirAll(work, 0o700); err != nil {
			t.Fatal(err)
		}
		pid := startIn(t, os.Args[0], work, forkedEnv+"=1")
		findAndStop(t, newRuntime(t, Config{Dir: dir}), runtime.Handle{BackendID: "bk_preexec"}, pid)
	})
	t.Run("another program in its directory", func(t *testing.T) {
		// A shell an operator left in a lost backend's directory is not
		// the backend.
		dir := t.TempDir()
		work := filepath.Join(dir, "bk_visited", "work")
		if err := os.MkdirAll(work, 0o700); err != nil {
			t.Fatal(err)
		}
		pid := startIn(t, bin, work, "PORT=0")
		hs, err := newRuntime(t, Config{Dir: dir}).List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(hs) != 0 {
			t.Errorf("List = %v: it took process %d, another program whose working directory is the backend's, for the backend", hs, pid)
		}
	})
}

// A backend of mode volume holds its volume's lock for as long as it runs,
// even after the Berth that started it died; a second backend for the
// volume cannot start until it is gone.
func TestRuntime_VolumeLock(t *testing.T) {
	t.Parallel()
	bin := runtimetest.BuildTestBackend(t)
	ctx := context.Background()
	dir := t.TempDir()
	lock := filepath.Join(t.TempDir(), "k-doc")

	// A is started by a Berth that exits right after (the helper process).
	sp := testSpec(t, bin, "bk_vola", nil)
	sp.VolumeLock = lock
	a := startInHelper(t, dir, sp)
	t.Cleanup(func() { unix.Kill(-handleState(t, &a).PGID, unix.SIGKILL) })

	r := newRuntime(t, Config{Dir: dir})
	spB := testSpec(t, bin, "bk_volb", nil)
	spB.VolumeLock = lock
	if h, err := r.Start(ctx, spB); !errors.Is(err, runtime.ErrVolumeBusy) {
		if err == nil {
			r.Stop(ctx, h, "", 0)
			r.Cleanup(ctx, h)
		}
		t.Fatalf("start B while A runs: %v, want ErrVolumeBusy", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "bk_volb")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the refused start left its directory behind: %v", err)
	}
	if err := r.Stop(ctx, &a, "", 0); err != nil {
		t.Fatal(err)
	}
	start(t, r, spB)
}
