package docker

import (
	"context"
	"net/http"
	"testing"
	"time"
)

func TestRuntime_Freeze(t *testing.T) {
	r := newRuntime(t, Config{})
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
	if c := s.inspect(t); !c.State.Paused {
		t.Errorf("container state after Freeze: %+v, want paused", c.State)
	}
	if used := cpuOver(cpu, time.Second); used != 0 {
		t.Errorf("a frozen container used %dns of CPU over 1s, want 0", used)
	}
	mem, err := r.Memory(ctx, s.h)
	if err != nil || mem < 1<<20 {
		t.Errorf("Memory of the frozen container = %d, %v; want at least 1 MiB", mem, err)
	}
	c := http.Client{Timeout: 300 * time.Millisecond}
	if resp, err := c.Get("http://" + s.h.Addr + "/count"); err == nil {
		resp.Body.Close()
		t.Fatalf("a frozen container answered %s", resp.Status)
	}

	if err := r.Thaw(ctx, s.h); err != nil {
		t.Fatalf("Thaw: %v", err)
	}
	if err := r.Thaw(ctx, s.h); err != nil {
		t.Fatalf("Thaw of a running container: %v", err)
	}
	s.get(t, "/count", &n)
	if n != 4 {
		t.Errorf("/count after the thaw = %d, want 4 (memory kept, the frozen request served on thaw)", n)
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
