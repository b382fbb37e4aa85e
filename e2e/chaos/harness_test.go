package chaos

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
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

	"github.com/berthhq/berth/api"
	"github.com/berthhq/berth/internal/testbin"
)

// Generous bounds: the machine is shared and the test binary may run
// under the race detector. None of them is a pass/fail threshold on speed;
// each only turns a hang into a failure with a message.
const (
	healthTimeout = 90 * time.Second  // a restart reconciles hundreds of backends
	exitTimeout   = 150 * time.Second // berth's own --shutdown-timeout is 60 s
	killTimeout   = 30 * time.Second
)

// berthConfig says how to start one `berth serve`; a restart reuses it.
type berthConfig struct {
	runtime    string // process or docker
	dataDir    string
	volumeRoot string // --volume-root, when set
	apiKey     string
	logPath    string // berth's stdout and stderr are appended here
}

// berthProc is one running `berth serve`.
type berthProc struct {
	cfg    berthConfig
	API    string // control API base URL
	Proxy  string
	Client *api.Client

	cmd     *exec.Cmd
	log     *os.File
	done    chan struct{}
	waitErr error
}

// startBerth runs `berth serve` on fresh loopback ports and waits until it
// answers /healthz. A port taken between freeAddr and berth's bind is
// retried with new ones rather than failing the test.
func startBerth(t testing.TB, cfg berthConfig) *berthProc {
	t.Helper()
	for attempt := 1; ; attempt++ {
		b, err := launchBerth(cfg)
		if err != nil {
			t.Fatalf("start berth: %v", err)
		}
		err = b.waitHealthy()
		if err == nil {
			return b
		}
		b.kill()
		if errors.Is(err, errPortTaken) && attempt < 5 {
			t.Logf("berth could not bind its ports (%v); retrying with others", err)
			continue
		}
		t.Fatalf("%v\n%s", err, tailFile(cfg.logPath, 60))
	}
}

var errPortTaken = errors.New("a listen address was taken")

func launchBerth(cfg berthConfig) (*berthProc, error) {
	apiAddr, proxyAddr, backendAddr := freeAddr(), freeAddr(), freeAddr()
	args := []string{"serve",
		"--api-addr", apiAddr,
		"--proxy-addr", proxyAddr,
		"--backend-api-addr", backendAddr,
		"--data-dir", cfg.dataDir,
		"--store", "sqlite:" + filepath.Join(cfg.dataDir, "berth.db"),
		"--runtime", cfg.runtime,
		"--api-key", cfg.apiKey,
		"--log-level", "info",
	}
	if cfg.volumeRoot != "" {
		args = append(args, "--volume-root", cfg.volumeRoot)
	}
	lf, err := os.OpenFile(cfg.logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(lf, "=== %s berth %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(args, " "))
	b := &berthProc{
		cfg:   cfg,
		API:   "http://" + apiAddr,
		Proxy: "http://" + proxyAddr,
		log:   lf,
		done:  make(chan struct{}),
	}
	// No client timeout: every call has a context with its own deadline.
	b.Client = api.NewClient(b.API, cfg.apiKey, &http.Client{})
	b.cmd = exec.Command(bin.berth, args...)
	b.cmd.Dir = cfg.dataDir
	b.cmd.Env = cleanEnv()
	b.cmd.Stdout = lf
	b.cmd.Stderr = lf
	if err := b.cmd.Start(); err != nil {
		lf.Close()
		return nil, err
	}
	go func() {
		b.waitErr = b.cmd.Wait()
		lf.Close()
		close(b.done)
	}()
	return b, nil
}

// cleanEnv is this process's environment without BERTH_* settings that
// would change how the server under test behaves.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "BERTH_") {
			env = append(env, kv)
		}
	}
	return env
}

func (b *berthProc) waitHealthy() error {
	hc := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(healthTimeout)
	for {
		req, _ := http.NewRequest(http.MethodGet, b.API+"/healthz", nil)
		req.Header.Set("Authorization", "Bearer "+b.cfg.apiKey)
		resp, err := hc.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-b.done:
			if strings.Contains(tailFile(b.cfg.logPath, 5), "address already in use") {
				return fmt.Errorf("%w: berth exited: %v", errPortTaken, b.waitErr)
			}
			return fmt.Errorf("berth exited before it was healthy: %v", b.waitErr)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("berth did not answer %s/healthz within %v (last error %v)", b.API, healthTimeout, err)
		}
	}
}

// alive reports whether berth has not exited yet.
func (b *berthProc) alive() bool {
	select {
	case <-b.done:
		return false
	default:
		return true
	}
}

// kill SIGKILLs berth itself (its backends live in their own process
// groups or containers) and waits for it to be gone.
func (b *berthProc) kill() error {
	if !b.alive() {
		return nil
	}
	b.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-b.done:
		return nil
	case <-time.After(killTimeout):
		return fmt.Errorf("berth (pid %d) did not die from SIGKILL within %v", b.cmd.Process.Pid, killTimeout)
	}
}

// stop sends SIGTERM and waits for berth to exit; it returns how it exited.
func (b *berthProc) stop() error {
	if !b.alive() {
		return fmt.Errorf("berth had already exited: %v", b.waitErr)
	}
	if err := b.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case <-b.done:
		return b.waitErr
	case <-time.After(exitTimeout):
		b.kill()
		return fmt.Errorf("berth did not exit within %v of SIGTERM; killed it", exitTimeout)
	}
}

// freeAddr returns a loopback address nobody listens on right now (see
// testbin.FreeAddr).
func freeAddr() string {
	addr, err := testbin.PickAddr()
	if err != nil {
		panic(err)
	}
	return addr
}

func tailFile(path string, lines int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}

// ---- what runs ----

// markerEnv is the variable every backend of one iteration carries in its
// spawn env (and so everything it starts), with a value unique to that
// iteration of this test process: it is how the test tells its processes
// from everyone else's on a shared machine.
const markerEnv = "CHAOS_MARK"

// proc is a live process of an iteration.
type proc struct {
	pid       int
	backendID string
	key       string
}

// markedProcs lists live (non-zombie) processes whose environment has
// markerEnv=marker: backends' processes, on the host or in containers (this
// test runs as root or as the user who owns them, so it can read their
// environment).
func markedProcs(marker string) []proc {
	want := []byte(markerEnv + "=" + marker + "\x00")
	ents, _ := os.ReadDir("/proc")
	var out []proc
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		raw, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err != nil || !bytes.Contains(append(raw, 0), want) || !alive(pid) {
			continue
		}
		p := proc{pid: pid}
		for _, kv := range bytes.Split(raw, []byte{0}) {
			k, v, _ := strings.Cut(string(kv), "=")
			switch k {
			case "BERTH_BACKEND_ID":
				p.backendID = v
			case "BERTH_KEY":
				p.key = v
			}
		}
		out = append(out, p)
	}
	return out
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 || i+2 >= len(stat) {
		return false
	}
	return stat[i+2] != 'Z' && stat[i+2] != 'X'
}

// killMarked SIGKILLs every process of the iteration (and its process
// group, which a backend leads) until none is left, and returns how many
// it found.
func killMarked(marker string) int {
	n := 0
	for range 50 {
		ps := markedProcs(marker)
		if len(ps) == 0 {
			return n
		}
		n = max(n, len(ps))
		for _, p := range ps {
			if pgid, err := syscall.Getpgid(p.pid); err == nil && pgid == p.pid {
				syscall.Kill(-pgid, syscall.SIGKILL)
			}
			syscall.Kill(p.pid, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return n
}

// ---- Docker ----

// instanceLabel is the berth.instance label of the Berth whose data dir is
// dir, as internal/cli derives it: how the test finds its own containers
// on an engine other Berths share.
func instanceLabel(dir string) string {
	abs, _ := filepath.Abs(dir)
	sum := sha256.Sum256([]byte(abs))
	return "berth-" + hex.EncodeToString(sum[:6])
}

// ctr is one container of an iteration's Berth.
type ctr struct {
	id, state, backendID, key string
	sandbox                   bool // a network sandbox, not a backend
}

// containers lists every container (any state) labelled with instance.
func containers(ctx context.Context, instance string) ([]ctr, error) {
	out, err := exec.CommandContext(ctx, "docker", "ps", "-a", "--no-trunc",
		"--filter", "label=berth.instance="+instance,
		"--format", `{{.ID}}|{{.State}}|{{.Label "berth.backend"}}|{{.Label "berth.key"}}|{{.Label "berth.sandbox"}}`).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return nil, fmt.Errorf("docker ps: %v: %s", err, ee.Stderr)
		}
		return nil, fmt.Errorf("docker ps: %w", err)
	}
	var cs []ctr
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Split(line, "|")
		if len(f) != 5 {
			continue
		}
		cs = append(cs, ctr{id: f[0], state: f[1], backendID: f[2], key: f[3], sandbox: f[4] != ""})
	}
	return cs, nil
}

// usedInstances are the docker instances this process's iterations ran:
// TestMain removes their containers once more at the end, for the engine
// may still create one a killed berth asked for after its iteration's
// cleanup.
var usedInstances = &instanceSet{m: map[string]bool{}}

type instanceSet struct {
	mu sync.Mutex
	m  map[string]bool
}

func (s *instanceSet) add(instance string) {
	s.mu.Lock()
	s.m[instance] = true
	s.mu.Unlock()
}

// removeAll removes the containers of every instance and reports how many.
func (s *instanceSet) removeAll() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for in := range s.m {
		n += removeContainers(in)
	}
	return n
}

// removeContainers force-removes every container of instance.
func removeContainers(instance string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cs, err := containers(ctx, instance)
	if err != nil || len(cs) == 0 {
		return 0
	}
	ids := []string{"rm", "-f"}
	for _, c := range cs {
		ids = append(ids, c.id)
	}
	exec.CommandContext(ctx, "docker", ids...).Run()
	return len(cs)
}

// needDocker fails in CI and skips elsewhere when no engine answers, and
// returns the backend image: FROM scratch, the static testbackend only.
func needDocker(t *testing.T) string {
	t.Helper()
	testbin.NeedDocker(t)
	img, err := testbin.Image(bin.testbackend, "berth-chaos-testbackend")
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}
