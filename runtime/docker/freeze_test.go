package docker

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/moby/moby/client"
)

func TestRuntime_Freeze(t *testing.T) {
	for _, tc := range []struct {
		name   string
		engine bool
	}{
		{"cgroup freezer", false},
		{"engine (docker pause)", true},
	} {
		t.Run(tc.name, func(t *testing.T) { testFreeze(t, tc.engine) })
	}
}

func testFreeze(t *testing.T, engine bool) {
	r := newRuntime(t, Config{NoCgroupFreeze: engine})
	s := start(t, r, testSpec(testID(), map[string]string{"TB_SPIN": "1"}))
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	cpu := func() int64 {
		st, err := r.stats(ctx, s.h)
		if err != nil {
			t.Fatal(err)
		}
		return int64(st.CPUStats.CPUUsage.TotalUsage)
	}
	var n int
	s.get(t, "/count", &n)
	s.get(t, "/count", &n)
	if used := cpuOver(cpu, 500*time.Millisecond); used <= 0 {
		t.Fatalf("a running container that spins used %dns of CPU over 500ms, want some", used)
	}

	if err := r.Freeze(ctx, s.h); err != nil {
		t.Fatalf("Freeze: %v", err)
	}
	if err := r.Freeze(ctx, s.h); err != nil {
		t.Fatalf("Freeze of a frozen container: %v", err)
	}
	c := s.inspect(t)
	if fz, direct := r.freezer(ctx, c.ID); engine || !direct {
		if engine && direct {
			t.Error("NoCgroupFreeze, yet the runtime found the cgroup freezer")
		}
		if !engine {
			t.Logf("the container's cgroup freezer is not writable here: Freeze went through the engine")
		}
		if !c.State.Paused {
			t.Errorf("container state after Freeze through the engine: %+v, want paused", c.State)
		}
	} else if c.State.Paused {
		t.Errorf("the engine says paused: Freeze went through it, not the cgroup %s", fz.dir)
	}
	if used := cpuOver(cpu, time.Second); used != 0 {
		t.Errorf("a frozen container used %dns of CPU over 1s, want 0", used)
	}
	mem, err := r.Memory(ctx, s.h)
	if err != nil || mem < 1<<20 {
		t.Errorf("Memory of the frozen container = %d, %v; want at least 1 MiB", mem, err)
	}
	hc := http.Client{Timeout: 300 * time.Millisecond}
	if resp, err := hc.Get("http://" + s.h.Addr + "/count"); err == nil {
		resp.Body.Close()
		t.Fatalf("a frozen container answered %s", resp.Status)
	}

	if err := r.Thaw(ctx, s.h); err != nil {
		t.Fatalf("Thaw: %v", err)
	}
	if err := r.Thaw(ctx, s.h); err != nil {
		t.Fatalf("Thaw of a running container: %v", err)
	}
	// The request sent while frozen waited in the accept queue and runs
	// on thaw, concurrently with ours: after k requests of ours the
	// counter is 2 + k, and 3 + k once it ran.
	for k := 1; ; k++ {
		s.get(t, "/count", &n)
		if n == 3+k {
			break
		}
		if n != 2+k || k == 50 {
			t.Fatalf("/count after the thaw = %d at our request %d, want %d (memory kept, the frozen request served on thaw)", n, k, 3+k)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if used := cpuOver(cpu, 500*time.Millisecond); used <= 0 {
		t.Errorf("the thawed container used %dns of CPU over 500ms, want some", used)
	}

	// A paused container still stops at once.
	if err := r.Freeze(ctx, s.h); err != nil {
		t.Fatalf("Freeze: %v", err)
	}
	if err := r.Stop(ctx, s.h, "", 0); err != nil {
		t.Fatalf("Stop of a frozen container: %v", err)
	}
	s.wait(t)
}

// cpuOver is how much CPU cpu counts over d.
func cpuOver(cpu func() int64, d time.Duration) int64 {
	before := cpu()
	time.Sleep(d)
	return cpu() - before
}

// A container frozen through its cgroup by a Berth that died is still
// stopped gracefully by the next one: Stop thaws it, so its stop signal is
// handled (exit 0), not left pending until the kill.
func TestRuntime_StopThawsFrozenByAnother(t *testing.T) {
	r := newRuntime(t, Config{})
	s := start(t, r, testSpec(testID(), nil))
	var env map[string]string
	s.get(t, "/", &env)
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	if err := r.Freeze(ctx, s.h); err != nil {
		t.Fatal(err)
	}
	if _, direct := r.freezer(ctx, s.inspect(t).ID); !direct {
		t.Skip("the container's cgroup freezer is not writable here: the engine froze it, and its Stop unpauses by itself")
	}
	next := newRuntime(t, Config{Instance: r.cfg.Instance})
	start := time.Now()
	if err := next.Stop(ctx, s.h, "", 20*time.Second); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("Stop took %v: the stop signal waited for the kill", took)
	}
	if e := s.wait(t); e.Code != 0 || e.Signal != "" {
		t.Errorf("exit %+v, want 0: the frozen container never handled SIGTERM", e)
	}
}

// A container frozen through its cgroup is still removed by a forced
// remove, which is how the reaper of a replica whose Berth died removes
// its containers (without a thaw: the engine's kill handles the freezer).
func TestRuntime_ForceRemoveFrozen(t *testing.T) {
	r := newRuntime(t, Config{})
	s := start(t, r, testSpec(testID(), nil))
	var env map[string]string
	s.get(t, "/", &env)
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	if err := r.Freeze(ctx, s.h); err != nil {
		t.Fatal(err)
	}
	if err := r.Cleanup(ctx, s.h); err != nil {
		t.Fatalf("Cleanup (forced remove) of a frozen container: %v", err)
	}
	cid, _ := containerID(s.h)
	if _, err := r.cli.ContainerInspect(ctx, cid, client.ContainerInspectOptions{}); err == nil {
		t.Error("the frozen container is still there after a forced remove")
	}
}
