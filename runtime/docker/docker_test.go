package docker

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/runtime"
	"github.com/berthhq/berth/runtime/runtimetest"
)

const patience = time.Minute

func TestConformance(t *testing.T) {
	needEngine(t)
	runtimetest.Run(t, runtimetest.Harness{
		New:  func(t *testing.T) runtime.Runtime { return newRuntime(t, Config{}) },
		Spec: func(t *testing.T, id string, env map[string]string) runtime.Spec { return testSpec(id, env) },
		Restart: func(t *testing.T, old runtime.Runtime) runtime.Runtime {
			// A new connection and no memory of what the old one started:
			// all it has is the persisted handle.
			return newRuntime(t, Config{Instance: old.(*Runtime).cfg.Instance})
		},
	})
}

func testSpec(id string, env map[string]string) runtime.Spec {
	return runtime.Spec{
		BackendID: id,
		Key:       "key-" + id,
		Spawn:     berth.SpawnConfig{Image: testImage},
		Env:       runtimetest.Env(id, defaultPort, env),
		Port:      defaultPort,
	}
}

// started is one backend a test started; it is stopped and removed when
// the test ends.
type started struct {
	r    *Runtime
	h    *runtime.Handle
	logs *logBuffer
}

func testID() string { return "bk_dt" + strings.ToLower(rand.Text()[:12]) }

func start(t *testing.T, r *Runtime, spec runtime.Spec) *started {
	t.Helper()
	s := &started{r: r, logs: new(logBuffer)}
	spec.Logs = s.logs
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	h, err := r.Start(ctx, spec)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	s.h = h
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), patience)
		defer cancel()
		if err := r.Stop(ctx, h, "", 0); err != nil {
			t.Errorf("Stop: %v", err)
		}
		if err := r.Cleanup(ctx, h); err != nil {
			t.Errorf("Cleanup: %v", err)
		}
	})
	return s
}

// get polls path until the backend answers 200 and decodes the JSON body.
func (s *started) get(t *testing.T, path string, v any) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for {
		resp, err := http.Get("http://" + s.h.Addr + path)
		if err == nil {
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("GET %s: %s", path, resp.Status)
			}
			if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
				t.Fatalf("GET %s: %v", path, err)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %v\nlogs:\n%s", path, err, s.logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *started) inspect(t *testing.T) container.InspectResponse {
	t.Helper()
	cid, err := containerID(s.h)
	if err != nil {
		t.Fatal(err)
	}
	res, err := s.r.cli.ContainerInspect(context.Background(), cid, client.ContainerInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return res.Container
}

func (s *started) wait(t *testing.T) runtime.Exit {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	e, err := s.r.Wait(ctx, s.h)
	if err != nil {
		t.Fatalf("Wait: %v", err)
	}
	return e
}

func TestRuntime_Start_hardening(t *testing.T) {
	t.Parallel()
	r := newRuntime(t, Config{})
	tests := []struct {
		name      string
		image     string
		res       berth.Resources
		readOnly  bool
		wantUser  string
		wantMemMB int64
		wantCPU   int64
		wantPids  int64
	}{
		{"defaults", testImage, berth.Resources{}, false, "65534:65534", 512, 1e9, 256},
		{"spawn limits", testImage, berth.Resources{MemoryMB: 64, CPUMillis: 250, Pids: 32}, false, "65534:65534", 64, 25e7, 32},
		{"read-only root", testImage, berth.Resources{}, true, "65534:65534", 512, 1e9, 256},
		{"image user", testImageUser, berth.Resources{}, false, "1000:1000", 512, 1e9, 256},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			spec := testSpec(testID(), nil)
			spec.Spawn.Image, spec.Spawn.Resources, spec.Spawn.ReadOnlyRootFS = tt.image, tt.res, tt.readOnly
			s := start(t, r, spec)
			var env map[string]string
			s.get(t, "/", &env) // it runs, and answers, under all of it
			c := s.inspect(t)
			hc := c.HostConfig
			if !slices.Equal(hc.CapDrop, []string{"ALL"}) {
				t.Errorf("CapDrop = %v, want [ALL]", hc.CapDrop)
			}
			if len(hc.CapAdd) != 0 || hc.Privileged {
				t.Errorf("CapAdd = %v, Privileged = %v, want none", hc.CapAdd, hc.Privileged)
			}
			if !slices.Contains(hc.SecurityOpt, "no-new-privileges") {
				t.Errorf("SecurityOpt = %v, want no-new-privileges", hc.SecurityOpt)
			}
			if got, want := hc.Memory, tt.wantMemMB<<20; got != want || hc.MemorySwap != want {
				t.Errorf("Memory, MemorySwap = %d, %d, want %d for both (no swap)", got, hc.MemorySwap, want)
			}
			if hc.NanoCPUs != tt.wantCPU {
				t.Errorf("NanoCPUs = %d, want %d", hc.NanoCPUs, tt.wantCPU)
			}
			if hc.PidsLimit == nil || *hc.PidsLimit != tt.wantPids {
				t.Errorf("PidsLimit = %v, want %d", hc.PidsLimit, tt.wantPids)
			}
			if hc.Init == nil || !*hc.Init {
				t.Error("Init is not set: the backend runs as pid 1")
			}
			if c.Config.User != tt.wantUser {
				t.Errorf("User = %q, want %q", c.Config.User, tt.wantUser)
			}
			if hc.ReadonlyRootfs != tt.readOnly {
				t.Errorf("ReadonlyRootfs = %v, want %v", hc.ReadonlyRootfs, tt.readOnly)
			}
			if _, ok := hc.Tmpfs["/tmp"]; ok != tt.readOnly {
				t.Errorf("Tmpfs = %v, want /tmp only with a read-only root", hc.Tmpfs)
			}
			want := map[string]string{LabelBackend: spec.BackendID, LabelKey: spec.Key, LabelInstance: r.cfg.Instance, LabelManaged: "true"}
			for k, v := range want {
				if got := c.Config.Labels[k]; got != v {
					t.Errorf("label %s = %q, want %q", k, got, v)
				}
			}
		})
	}
}

func TestRuntime_Start_command(t *testing.T) {
	t.Parallel()
	r := newRuntime(t, Config{})
	spec := testSpec(testID(), nil)
	spec.Spawn.Command = []string{"/testbackend", "-port=${PORT}", "$BERTH_KEY", "$$"}
	s := start(t, r, spec)
	var args []string
	s.get(t, "/args", &args)
	if want := []string{"/testbackend", "-port=8080", spec.Key, "$"}; !slices.Equal(args, want) {
		t.Errorf("args = %q, want %q", args, want)
	}
}

func TestRuntime_Start_stateDir(t *testing.T) {
	t.Parallel()
	r := newRuntime(t, Config{})
	dir := t.TempDir()
	if err := os.WriteFile(dir+"/restored", []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	spec := testSpec(testID(), map[string]string{"BERTH_STATE_DIR": dir})
	spec.StateDir = dir
	s := start(t, r, spec)
	var env map[string]string
	s.get(t, "/", &env)
	if got := env["BERTH_STATE_DIR"]; got != stateMount {
		t.Errorf("the backend sees BERTH_STATE_DIR=%q, want %q", got, stateMount)
	}
	c := s.inspect(t)
	if len(c.Mounts) != 1 || c.Mounts[0].Source != dir || c.Mounts[0].Destination != stateMount || !c.Mounts[0].RW {
		t.Errorf("Mounts = %+v, want %s bound read-write at %s", c.Mounts, dir, stateMount)
	}
	if os.Geteuid() != 0 {
		return // the tree was made world-writable instead
	}
	for _, p := range []string{dir, dir + "/restored"} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != 65534 || st.Gid != 65534 {
			t.Errorf("%s is owned by %d:%d, want 65534:65534, the container's user", p, st.Uid, st.Gid)
		}
	}
}

func TestRuntime_Start_backendAPIHost(t *testing.T) {
	t.Parallel()
	r := newRuntime(t, Config{BackendAPIHost: "berth-host"})
	spec := testSpec(testID(), map[string]string{"BERTH_STATE_URL": "http://127.0.0.1:7071/v1/backends/x/state"})
	s := start(t, r, spec)
	var env map[string]string
	s.get(t, "/", &env)
	if got, want := env["BERTH_STATE_URL"], "http://berth-host:7071/v1/backends/x/state"; got != want {
		t.Errorf("BERTH_STATE_URL = %q, want %q", got, want)
	}
	if !r.Gateway().IsValid() {
		t.Errorf("Gateway() = %v, want the network's gateway", r.Gateway())
	}
}

func TestRehost(t *testing.T) {
	tests := []struct{ in, host, want string }{
		{"http://127.0.0.1:7071/v1/backends/b/state", "172.18.0.1", "http://172.18.0.1:7071/v1/backends/b/state"},
		{"http://localhost:7071/s", "host.docker.internal", "http://host.docker.internal:7071/s"},
		{"http://[::1]:7071/s", "fd00::1", "http://[fd00::1]:7071/s"},
		{"http://127.0.0.1/s", "h", "http://h/s"},
		{"https://berth.example.com/s", "h", "https://berth.example.com/s"},
		{"http://10.0.0.5:7071/s", "h", "http://10.0.0.5:7071/s"},
	}
	for _, tt := range tests {
		if got := rehost(tt.in, tt.host); got != tt.want {
			t.Errorf("rehost(%q, %q) = %q, want %q", tt.in, tt.host, got, tt.want)
		}
	}
}

func TestRuntime_Start_publish(t *testing.T) {
	t.Parallel()
	r := newRuntime(t, Config{Publish: true})
	s := start(t, r, testSpec(testID(), nil))
	if !strings.HasPrefix(s.h.Addr, "127.0.0.1:") {
		t.Errorf("Addr = %q, want a port on 127.0.0.1", s.h.Addr)
	}
	var env map[string]string
	s.get(t, "/", &env)
}

func TestRuntime_Stop_signal(t *testing.T) {
	t.Parallel()
	r := newRuntime(t, Config{})
	tests := []struct {
		name, image, spawnSignal string
	}{
		{"spawn stop_signal", testImage, "sigint"},
		{"image STOPSIGNAL", testImageUser, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			spec := testSpec(testID(), map[string]string{"TB_IGNORE_SIGTERM": "1"})
			spec.Spawn.Image, spec.Spawn.StopSignal = tt.image, tt.spawnSignal
			s := start(t, r, spec)
			var env map[string]string
			s.get(t, "/", &env)
			ctx, cancel := context.WithTimeout(context.Background(), patience)
			defer cancel()
			if err := r.Stop(ctx, s.h, "", 30*time.Second); err != nil {
				t.Fatal(err)
			}
			if e := s.wait(t); e.Code != 0 {
				t.Errorf("Wait = %+v, want exit 0 after SIGINT", e)
			}
			s.logs.waitFor(t, "got SIGINT")
		})
	}
}

func TestRuntime_Wait_oomKilled(t *testing.T) {
	t.Parallel()
	r := newRuntime(t, Config{})
	// The engine learns of an OOM kill from containerd, which watches the
	// container's cgroup only once the task has started: a kill right at
	// the start, on a loaded machine, can come before the watch and never
	// be reported (seen in CI). So the backend starts first, then
	// allocates.
	spec := testSpec(testID(), map[string]string{"TB_ALLOC_MB": "256", "TB_ALLOC_AFTER_MS": "500"})
	spec.Spawn.Resources.MemoryMB = 32
	s := start(t, r, spec)
	e := s.wait(t)
	if !e.OOMKilled || e.Code != 128+9 {
		t.Errorf("Wait = %+v, want OOMKilled and code 137\nlogs:\n%s", e, s.logs)
	}
}

func TestRuntime_Start_pullPolicy(t *testing.T) {
	t.Parallel()
	r := newRuntime(t, Config{})
	tests := []struct {
		name, image, policy string
		wantErr             string // "" means Start succeeds
		missing             bool   // the error is ErrImageMissing
	}{
		{"never, missing", "berth-no-such-image:test", PullNever, "pull_policy is never", true},
		{"if_not_present, missing", noRegistry + "berth-no-such-image:test", PullIfNotPresent, "could not be pulled", true},
		{"always, present", noRegistry + testImage, PullAlways, "pull_policy is always", false},
		// Pulling from noRegistry fails, so these prove no pull happens.
		{"if_not_present, present", noRegistry + testImage, PullIfNotPresent, "", false},
		{"default, present", noRegistry + testImage, "", "", false},
		{"never, present", testImage, PullNever, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			spec := testSpec(testID(), nil)
			spec.Spawn.Image, spec.Spawn.PullPolicy = tt.image, tt.policy
			if tt.wantErr == "" {
				var env map[string]string
				start(t, r, spec).get(t, "/", &env)
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), patience)
			defer cancel()
			h, err := r.Start(ctx, spec)
			if err == nil {
				r.Stop(ctx, h, "", 0)
				r.Cleanup(ctx, h)
				t.Fatalf("Start succeeded, want an error saying %q", tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), tt.image) || errors.Is(err, ErrImageMissing) != tt.missing {
				t.Errorf("Start: %v; want an error naming the image and saying %q (ErrImageMissing: %v)", err, tt.wantErr, tt.missing)
			}
			t.Log(err)
		})
	}
}

func TestRuntime_Start_failureLeavesNothing(t *testing.T) {
	t.Parallel()
	// The engine creates the container, then fails to start it: the image
	// has no /etc/passwd to find the user in.
	r := newRuntime(t, Config{User: "nosuchuser"})
	spec := testSpec(testID(), nil)
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	if h, err := r.Start(ctx, spec); err == nil {
		r.Cleanup(ctx, h)
		t.Fatal("Start as a user the image lacks succeeded")
	} else {
		t.Log(err)
	}
	hs, err := r.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hs {
		if h.BackendID == spec.BackendID {
			t.Errorf("a container of the failed start is left: %+v", h)
		}
	}
}

func TestRuntime_Recover_otherInstance(t *testing.T) {
	t.Parallel()
	r := newRuntime(t, Config{})
	s := start(t, r, testSpec(testID(), nil))
	other := newRuntime(t, Config{Instance: r.cfg.Instance + "-other"})
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	if err := other.Recover(ctx, s.h, io.Discard); !errors.Is(err, runtime.ErrGone) {
		t.Errorf("Recover by another instance: %v, want ErrGone", err)
	}
	hs, err := other.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hs {
		if h.BackendID == s.h.BackendID {
			t.Errorf("another instance lists %s", h.BackendID)
		}
	}
}

func TestNew_networkRace(t *testing.T) {
	needEngine(t)
	name := testNetwork + "-race"
	const n = 6
	rts := make([]*Runtime, n)
	var wg sync.WaitGroup
	for i := range rts {
		wg.Go(func() { rts[i] = newRuntime(t, Config{Network: name}) })
	}
	wg.Wait()
	t.Cleanup(func() {
		rts[0].cli.NetworkRemove(context.Background(), rts[0].network(), client.NetworkRemoveOptions{})
	})
	for _, r := range rts[1:] {
		if r.network() != rts[0].network() {
			t.Errorf("runtimes use networks %s and %s", rts[0].network()[:12], r.network()[:12])
		}
	}
	list, err := rts[0].cli.NetworkList(context.Background(), client.NetworkListOptions{Filters: make(client.Filters).Add("name", name)})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 1 {
		t.Fatalf("%d networks named %s, want 1", len(list.Items), name)
	}
	if got := list.Items[0].Options[iccOption]; got != "false" {
		t.Errorf("network option %s = %q, want false: backends must not reach each other", iccOption, got)
	}
}

func TestAvailable(t *testing.T) {
	needEngine(t)
	ctx := context.Background()
	if !Available(ctx, "") {
		t.Error("Available = false with an engine running")
	}
	if Available(ctx, "unix:///nonexistent/docker.sock") {
		t.Error("Available = true for a socket that does not exist")
	}
}

func TestConfig_Validate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"network", Config{Network: "-bad name"}, "Network"},
		{"memory", Config{MemoryMB: 4}, "MemoryMB"},
		{"cpu", Config{CPUMillis: -1}, "CPUMillis"},
		{"pids", Config{Pids: -1}, "Pids"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.setDefaults()
			if err := tt.cfg.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Validate() = %v, want an error naming %s", err, tt.want)
			}
		})
	}
	var c Config
	c.setDefaults()
	if err := c.Validate(); err != nil {
		t.Errorf("Validate() of the defaults = %v", err)
	}
}

// logBuffer is a Spec.Logs tests can read while the runtime writes.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuffer) waitFor(t *testing.T, s string) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for !strings.Contains(l.String(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("logs lack %q:\n%s", s, l)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A mode-volume backend's container keeps its volume from every other
// container of the engine, of any Berth (another instance label here):
// a second start for the volume fails with ErrVolumeBusy until the first
// container has stopped.
func TestRuntime_Start_volumeBusy(t *testing.T) {
	t.Parallel()
	r := newRuntime(t, Config{})
	other := newRuntime(t, Config{Instance: "volume-busy-" + strings.ToLower(rand.Text()[:8])})
	dir := t.TempDir()
	spec := testSpec(testID(), nil)
	spec.StateDir, spec.VolumeLock = dir, dir+".lock"
	a := start(t, r, spec)

	specB := testSpec(testID(), nil)
	specB.StateDir, specB.VolumeLock = dir, dir+".lock"
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	if h, err := other.Start(ctx, specB); !errors.Is(err, runtime.ErrVolumeBusy) {
		if err == nil {
			other.Stop(ctx, h, "", 0)
			other.Cleanup(ctx, h)
		}
		t.Fatalf("second start for the volume while the first runs: %v, want ErrVolumeBusy", err)
	}
	if err := r.Stop(ctx, a.h, "", 0); err != nil {
		t.Fatal(err)
	}
	start(t, other, specB)
}
