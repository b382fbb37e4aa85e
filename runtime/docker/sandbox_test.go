package docker

import (
	"context"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/client"
)

// waitPool waits until r's pool holds want ready sandboxes and creates no
// more.
func waitPool(t testing.TB, r *Runtime, want int) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for {
		s := r.Sandboxes()
		if s.Ready == want && !s.Creating {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("sandbox pool: %+v, want %d ready", s, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// gone reports whether container ref no longer exists.
func gone(t *testing.T, r *Runtime, ref string) bool {
	t.Helper()
	_, err := r.cli.ContainerInspect(context.Background(), ref, client.ContainerInspectOptions{})
	if err != nil && !cerrdefs.IsNotFound(err) {
		t.Fatal(err)
	}
	return err != nil
}

func TestRuntime_Start_sandbox(t *testing.T) {
	t.Parallel()
	r := newRuntime(t, Config{Sandboxes: 1})
	waitPool(t, r, 1)
	s := start(t, r, testSpec(testID(), nil))
	st, err := handleState(s.h)
	if err != nil {
		t.Fatal(err)
	}
	if st.SandboxID == "" {
		t.Fatal("the backend did not take the ready sandbox")
	}
	var env map[string]string
	s.get(t, "/", &env) // reachable at the sandbox's address
	c := s.inspect(t)
	if got, want := string(c.HostConfig.NetworkMode), "container:"+st.SandboxID; got != want {
		t.Errorf("NetworkMode = %q, want %q", got, want)
	}
	if got := c.Config.Labels[LabelNetworkSandbox]; got != st.SandboxID {
		t.Errorf("label %s = %q, want %q", LabelNetworkSandbox, got, st.SandboxID)
	}
	waitPool(t, r, 1) // refilled

	// The sandbox is hardened like a backend, and more.
	res, err := r.cli.ContainerInspect(context.Background(), st.SandboxID, client.ContainerInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if hc := res.Container.HostConfig; !hc.ReadonlyRootfs || len(hc.CapDrop) != 1 || hc.CapDrop[0] != "ALL" || hc.Memory != sandboxMemory {
		t.Errorf("sandbox HostConfig: read-only %v, CapDrop %v, Memory %d", hc.ReadonlyRootfs, hc.CapDrop, hc.Memory)
	}
	if u := res.Container.Config.User; u != defaultUser {
		t.Errorf("sandbox user = %q, want %q", u, defaultUser)
	}

	// List, as after a crash of Berth, still knows the sandbox, and
	// Cleanup removes both.
	hs, err := r.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hs {
		if h.BackendID != s.h.BackendID {
			continue
		}
		if lst, _ := handleState(h); lst.SandboxID != st.SandboxID {
			t.Errorf("List: sandbox %q, want %q", lst.SandboxID, st.SandboxID)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	if err := r.Cleanup(ctx, s.h); err != nil {
		t.Fatal(err)
	}
	if !gone(t, r, st.ContainerID) || !gone(t, r, st.SandboxID) {
		t.Error("Cleanup left the container or its sandbox")
	}
}

// Backends in sandboxes cannot reach each other: the sandboxes sit on the
// network that forbids it.
func TestRuntime_Start_sandboxIsolation(t *testing.T) {
	t.Parallel()
	r := newRuntime(t, Config{Sandboxes: 2})
	waitPool(t, r, 2)
	a := start(t, r, testSpec(testID(), nil))
	b := start(t, r, testSpec(testID(), nil))
	for _, s := range []*started{a, b} {
		if st, _ := handleState(s.h); st.SandboxID == "" {
			t.Fatalf("%s did not start in a sandbox", s.h.BackendID)
		}
	}
	var env map[string]string
	b.get(t, "/", &env)
	var res map[string]string
	a.get(t, "/dial?addr="+b.h.Addr, &res)
	if res["error"] == "" {
		t.Errorf("backend %s reached backend %s at %s", a.h.BackendID, b.h.BackendID, b.h.Addr)
	}
}

// A Berth that stopped without Close left ready sandboxes; the next one of
// the instance removes them, and keeps those backends use.
func TestNew_removesOrphanSandboxes(t *testing.T) {
	needEngine(t)
	instance := testInstance + "-orphans"
	old := newRuntime(t, Config{Instance: instance, Sandboxes: 1})
	waitPool(t, old, 1)
	s := start(t, old, testSpec(testID(), nil))
	used, _ := handleState(s.h)
	orphan, err := old.pool.create() // as if ready when Berth died
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { old.removeContainer(orphan.id) })

	next := newRuntime(t, Config{Instance: instance, Sandboxes: -1})
	next.pool = &sandboxPool{r: next}
	next.pool.removeOrphans(context.Background())
	if !gone(t, next, orphan.id) {
		t.Error("the orphan sandbox is still there")
	}
	if gone(t, next, used.SandboxID) {
		t.Error("the sandbox of a live backend was removed")
	}
}

func TestRuntime_Sandboxes_off(t *testing.T) {
	t.Parallel()
	for _, cfg := range []Config{{Sandboxes: -1}, {Publish: true}} {
		r := newRuntime(t, cfg)
		if s := r.Sandboxes(); s != (SandboxStats{}) {
			t.Errorf("%+v: pool %+v, want none", cfg, s)
		}
		s := start(t, r, testSpec(testID(), nil))
		if st, _ := handleState(s.h); st.SandboxID != "" {
			t.Errorf("%+v: started in sandbox %s", cfg, st.SandboxID)
		}
		var env map[string]string
		s.get(t, "/", &env)
	}
}

// The sandbox program runs here and sleeps until killed.
func TestPauseProgram(t *testing.T) {
	prog := pauseProgram(goruntime.GOARCH)
	if prog == nil {
		t.Skipf("no sandbox program for %s", goruntime.GOARCH)
	}
	path := filepath.Join(t.TempDir(), "pause")
	if err := os.WriteFile(path, prog, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(path)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	// It must reach the blocking call (state S) and stay in it.
	stat := "/proc/" + strconv.Itoa(cmd.Process.Pid) + "/stat"
	for asleep := false; !asleep; {
		select {
		case err := <-exited:
			t.Fatalf("the program exited: %v", err)
		case <-time.After(5 * time.Millisecond):
		}
		b, err := os.ReadFile(stat)
		if err != nil {
			t.Fatal(err)
		}
		_, after, _ := strings.Cut(string(b), ") ")
		asleep = strings.HasPrefix(after, "S")
	}
	cmd.Process.Kill()
	if err := <-exited; err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("after SIGKILL: %v", err)
	}
	for arch, machine := range map[string]uint16{"amd64": 62, "arm64": 183} {
		p := pauseProgram(arch)
		le := binary.LittleEndian
		if got := le.Uint16(p[18:]); got != machine {
			t.Errorf("%s: e_machine %d, want %d", arch, got, machine)
		}
		if entry, size := le.Uint64(p[24:]), le.Uint64(p[64+32:]); entry != 0x400000+120 || size != uint64(len(p)) {
			t.Errorf("%s: entry %#x, segment size %d; want %#x and %d", arch, entry, size, 0x400000+120, len(p))
		}
	}
}
