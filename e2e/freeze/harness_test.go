package freeze

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
	"github.com/berthhq/berth/internal/testbin"
	"golang.org/x/sys/unix"
)

// variant is one way Berth runs backends in these tests.
type variant struct {
	name    string
	runtime string // process or docker
	cgroup  bool   // process backends in cgroup v2 (cgroup.freeze), not SIGSTOP
}

var variants = []variant{
	{name: "process", runtime: "process"},
	{name: "process-cgroup", runtime: "process", cgroup: true},
	{name: "docker", runtime: "docker"},
}

// forEach runs fn as a subtest for every variant.
func forEach(t *testing.T, fn func(t *testing.T, v variant)) {
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) { fn(t, v) })
	}
}

// server is one `berth dev` process.
type server struct {
	t      *testing.T
	v      variant
	API    string
	Proxy  string
	Client *api.Client
	image  string // the testbackend's image, for docker
	extra  []string

	dataDir     string
	backendAddr string
	network     string // --docker-network
	cmd         *exec.Cmd
	out         *testbin.SyncBuffer
	done        chan struct{}
	err         error
	killed      bool

	mu         sync.Mutex
	mismatches []error
}

func (s *server) mismatch(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mismatches = append(s.mismatches, err)
}

// start runs berth dev for v on fresh ports and data dir; the test's
// cleanup stops it with SIGINT and wants exit status 0 and no backend
// process left.
func start(t *testing.T, v variant) *server {
	t.Helper()
	s := &server{t: t, v: v, dataDir: t.TempDir(), backendAddr: testbin.FreeAddr(t)}
	var extra []string
	switch {
	case v.runtime == "docker":
		testbin.NeedDocker(t)
		img, err := testbin.Image(bin.TestBackend, "berth-freeze-tb")
		if err != nil {
			t.Fatal(err)
		}
		s.image = img
		s.network = "berth-freeze-" + strings.ToLower(rand.Text()[:8])
	case v.cgroup:
		extra = append(extra, "--cgroup-dir", cgroupDir(t))
	}
	s.launch(extra)
	t.Cleanup(s.stop)
	return s
}

// restart starts a killed server again on its data dir, configuration and
// backend API address.
func (s *server) restart() {
	s.t.Helper()
	s.launch(s.extra)
}

// interrupt stops berth gracefully (SIGINT), as an operator does, and
// wants exit status 0.
func (s *server) interrupt() {
	s.t.Helper()
	s.cmd.Process.Signal(os.Interrupt)
	select {
	case <-s.done:
	case <-time.After(60 * time.Second):
		s.t.Fatal("berth did not exit within 60s of SIGINT")
	}
	if s.err != nil {
		s.t.Fatalf("berth exited with %v after SIGINT, want status 0", s.err)
	}
}

// kill SIGKILLs berth (not its backends) and waits for it to be gone.
func (s *server) kill() {
	s.t.Helper()
	s.killed = true
	s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.done
}

func (s *server) launch(extra []string) {
	t := s.t
	t.Helper()
	s.extra = extra
	s.out, s.done, s.killed = &testbin.SyncBuffer{}, make(chan struct{}), false
	apiAddr, proxyAddr := testbin.FreeAddr(t), testbin.FreeAddr(t)
	args := []string{"dev", "--no-demo", "--log-level", "debug",
		"--api-addr", apiAddr, "--proxy-addr", proxyAddr, "--backend-api-addr", s.backendAddr,
		"--data-dir", s.dataDir, "--runtime", s.v.runtime}
	if s.network != "" {
		args = append(args, "--docker-network", s.network)
	}
	args = append(args, extra...)
	s.API, s.Proxy = "http://"+apiAddr, "http://"+proxyAddr
	s.Client = api.NewClient(s.API, "", nil)
	servers.Lock()
	servers.m[apiAddr] = s
	servers.Unlock()
	s.cmd = exec.Command(bin.Berth, args...)
	s.cmd.Dir = s.dataDir
	s.cmd.Env = testbin.CleanEnv()
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	cmd, done := s.cmd, s.done
	go func() { s.err = cmd.Wait(); close(done) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(s.API + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-s.done:
			t.Fatalf("berth exited before it was healthy: %v\n%s", s.err, s.out)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("berth did not answer /healthz within 30s\n%s", s.out)
		}
	}
}

func (s *server) stop() {
	t := s.t
	if s.killed {
		return
	}
	defer func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, err := range s.mismatches {
			t.Errorf("control API answer does not match api/openapi.json: %v", err)
		}
		if t.Failed() {
			t.Logf("berth output (tail):\n%s", tail(s.out.String(), 120))
		}
	}()
	ids := map[string]bool{}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	if list, err := s.Client.Backends(ctx, "", ""); err == nil {
		for _, b := range list {
			ids[b.ID] = true
		}
	}
	cancel()
	s.cmd.Process.Signal(os.Interrupt)
	select {
	case <-s.done:
	case <-time.After(60 * time.Second):
		t.Errorf("berth did not exit within 60s of SIGINT")
		s.cmd.Process.Kill()
		<-s.done
	}
	if s.err != nil {
		t.Errorf("berth exited with %v after SIGINT, want status 0", s.err)
	}
	for id := range ids {
		if pids := backendPIDs(id); len(pids) > 0 {
			t.Errorf("processes %v of backend %s survived berth's graceful stop", pids, id)
			for _, pid := range pids {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
}

// cgroupDir is a fresh cgroup v2 directory for Berth's process backends,
// removed when the test ends (after Berth, which removes the backends'
// cgroups in it).
func cgroupDir(t *testing.T) string {
	t.Helper()
	for _, root := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		var sfs unix.Statfs_t
		if unix.Statfs(root, &sfs) != nil || sfs.Type != unix.CGROUP2_SUPER_MAGIC || unix.Access(root, unix.W_OK) != nil {
			continue
		}
		dir := filepath.Join(root, fmt.Sprintf("berth-freeze-%d-%s", os.Getpid(), strings.ToLower(rand.Text()[:6])))
		if os.Mkdir(dir, 0o755) != nil {
			continue
		}
		t.Cleanup(func() {
			if err := os.Remove(dir); err != nil {
				t.Errorf("remove the test's cgroup: %v", err)
			}
		})
		return dir
	}
	msg := "no writable cgroup v2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified: run as root on a host with cgroup v2"
	if os.Getenv("CI") != "" {
		t.Fatal(msg + "; CI must have one")
	}
	t.Skip(msg)
	return ""
}

// spawn is a spawn config running the testbackend (binary or image) with
// env knobs, frozen after idle seconds.
func (s *server) spawn(idle, maxFrozen int, env map[string]string) *berth.SpawnConfig {
	sc := &berth.SpawnConfig{
		Env:              env,
		GraceSeconds:     ptr(5),
		MaxIdleSeconds:   ptr(idle),
		IdleAction:       berth.IdleFreeze,
		MaxFrozenSeconds: maxFrozen,
	}
	if s.image != "" {
		sc.Image = s.image
	} else {
		sc.Command = []string{bin.TestBackend}
	}
	return sc
}

func ptr[T any](v T) *T { return &v }

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// connect connects with wait and wants the backend ready.
func (s *server) connect(t *testing.T, key string, sc *berth.SpawnConfig) *api.ConnectResponse {
	t.Helper()
	resp, err := s.Client.Connect(ctxFor(t, time.Minute), api.ConnectRequest{Key: key, Spawn: sc, Wait: true, WaitTimeoutSeconds: 50})
	if err != nil {
		t.Fatalf("connect %q: %v", key, err)
	}
	if resp.State != berth.StateReady {
		t.Fatalf("connect %q: state %s, want ready", key, resp.State)
	}
	return resp
}

func (s *server) backend(t *testing.T, id string) *berth.Backend {
	t.Helper()
	b, err := s.Client.Backend(ctxFor(t, 10*time.Second), id)
	if err != nil {
		t.Fatalf("GET backend %s: %v", id, err)
	}
	return b
}

// waitFrozen polls the backend's record until it says frozen.
func (s *server) waitFrozen(t *testing.T, id string, within time.Duration) *berth.Backend {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		b := s.backend(t, id)
		if b.FrozenAt != nil {
			if b.State != berth.StateReady {
				t.Errorf("a frozen backend's state is %s, want ready", b.State)
			}
			return b
		}
		if !b.State.Live() || time.Now().After(deadline) {
			t.Fatalf("backend %s not frozen within %v: %+v", id, within, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *server) waitTerminated(t *testing.T, id string, within time.Duration) *berth.Backend {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		b := s.backend(t, id)
		if b.State == berth.StateTerminated {
			return b
		}
		if time.Now().After(deadline) {
			t.Fatalf("backend %s still %s after %v", id, b.State, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// get sends GET url (through the proxy) and returns the body, wanting 200.
func get(t *testing.T, c *http.Client, url string) string {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %s", url, resp.Status, b)
	}
	return string(b)
}

// metric reads one sample of the metrics endpoint (0 when absent).
func (s *server) metric(t *testing.T, name string) float64 {
	t.Helper()
	resp, err := http.Get(s.API + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metric %s: %v", name, err)
			}
			return f
		}
	}
	return 0
}

// awaitEvent follows the backend's events stream until an event's message
// starts with prefix, and returns that event.
func (s *server) awaitEvent(t *testing.T, id, prefix string, within time.Duration) api.StateEvent {
	t.Helper()
	var found *api.StateEvent
	errStop := fmt.Errorf("found")
	err := s.Client.Events(ctxFor(t, within), id, func(e api.StateEvent) error {
		if strings.HasPrefix(e.Message, prefix) {
			found = &e
			return errStop
		}
		return nil
	})
	if found == nil {
		t.Fatalf("no event of backend %s says %q within %v (%v)", id, prefix, within, err)
	}
	return *found
}

// backendPIDs lists the processes of a backend, found in /proc by the
// BERTH_BACKEND_ID in their environment: process backends and, as the
// host sees them, a container's.
func backendPIDs(id string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	want := []byte("BERTH_BACKEND_ID=" + id + "\x00")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		env, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err != nil || !bytes.Contains(env, want) {
			continue
		}
		if st, err := os.ReadFile("/proc/" + e.Name() + "/stat"); err == nil {
			if i := bytes.LastIndexByte(st, ')'); i > 0 && i+2 < len(st) && st[i+2] == 'Z' {
				continue
			}
		}
		pids = append(pids, pid)
	}
	return pids
}

// cpuTicks is the CPU time (utime + stime, in clock ticks) the processes
// used so far.
func cpuTicks(pids []int) int64 {
	var total int64
	for _, pid := range pids {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			continue
		}
		f := bytes.Fields(b[bytes.LastIndexByte(b, ')')+1:]) // f[0] is field 3
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseInt(string(f[11]), 10, 64)
		s, _ := strconv.ParseInt(string(f[12]), 10, 64)
		total += u + s
	}
	return total
}

// cpuOver is the CPU the backend's processes use over d.
func cpuOver(t *testing.T, id string, d time.Duration) int64 {
	t.Helper()
	pids := backendPIDs(id)
	if len(pids) == 0 {
		t.Fatalf("no process of backend %s found in /proc", id)
	}
	before := cpuTicks(pids)
	time.Sleep(d)
	return cpuTicks(pids) - before
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// decodeJSON decodes body into a T.
func decodeJSON[T any](t *testing.T, body string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatalf("decode %q: %v", body, err)
	}
	return v
}

func readAll(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
