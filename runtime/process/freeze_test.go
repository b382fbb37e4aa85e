package process

import (
	"bufio"
	"bytes"
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/berthhq/berth/runtime"
	"github.com/berthhq/berth/runtime/runtimetest"
)

func TestRuntime_Freeze(t *testing.T) {
	bin := runtimetest.BuildTestBackend(t)
	for _, tc := range []struct {
		name   string
		cgroup bool
	}{
		{"process group (SIGSTOP)", false},
		{"cgroup v2 (cgroup.freeze)", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var cfg Config
			if tc.cgroup {
				cfg.CgroupDir = testCgroup(t)
			}
			r := newRuntime(t, cfg)
			h := start(t, r, testSpec(t, bin, "bk_freeze", map[string]string{"TB_SPIN": "1"}))
			st := handleState(t, h)
			cpu := func() int64 { return groupCPU(t, st) }
			var n int
			getJSON(t, h.Addr, "/count", &n)
			getJSON(t, h.Addr, "/count", &n)

			if used := cpuOver(cpu, 500*time.Millisecond); used <= 0 {
				t.Fatalf("a running backend that spins used %d CPU units over 500ms, want some", used)
			}
			ctx := context.Background()
			if err := r.Freeze(ctx, h); err != nil {
				t.Fatalf("Freeze: %v", err)
			}
			if err := r.Freeze(ctx, h); err != nil {
				t.Fatalf("Freeze of a frozen backend: %v", err)
			}
			if tc.cgroup {
				if frozen, err := cgroupFrozen(st.Cgroup, true); err != nil || !frozen {
					t.Errorf("cgroup.events frozen = %v (%v), want 1", frozen, err)
				}
			}
			if used := cpuOver(cpu, time.Second); used != 0 {
				t.Errorf("a frozen backend used %d CPU units over 1s, want 0", used)
			}
			mem, err := r.Memory(ctx, h)
			if err != nil || mem < 1<<20 {
				t.Errorf("Memory of the frozen backend = %d, %v; want at least 1 MiB", mem, err)
			}
			c := http.Client{Timeout: 300 * time.Millisecond}
			if resp, err := c.Get("http://" + h.Addr + "/count"); err == nil {
				resp.Body.Close()
				t.Fatalf("a frozen backend answered %s", resp.Status)
			}

			if err := r.Thaw(ctx, h); err != nil {
				t.Fatalf("Thaw: %v", err)
			}
			if err := r.Thaw(ctx, h); err != nil {
				t.Fatalf("Thaw of a running backend: %v", err)
			}
			// The request sent while frozen waited in the accept queue and
			// runs on thaw, concurrently with ours: after k requests of
			// ours the counter is 2 + k, and 3 + k once it ran.
			for k := 1; ; k++ {
				getJSON(t, h.Addr, "/count", &n)
				if n == 3+k {
					break
				}
				if n != 2+k || k == 50 {
					t.Fatalf("/count after the thaw = %d at our request %d, want %d (memory kept, the frozen request served on thaw)", n, k, 3+k)
				}
				time.Sleep(10 * time.Millisecond)
			}
			if used := cpuOver(cpu, 500*time.Millisecond); used <= 0 {
				t.Errorf("the thawed backend used %d CPU units over 500ms, want some", used)
			}

			// A frozen backend still stops, at once, and leaves nothing.
			if err := r.Freeze(ctx, h); err != nil {
				t.Fatalf("Freeze: %v", err)
			}
			sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			if err := r.Stop(sctx, h, "", 0); err != nil {
				t.Fatalf("Stop of a frozen backend: %v", err)
			}
			wait(t, r, h)
			if err := r.Freeze(ctx, h); err != runtime.ErrGone {
				t.Errorf("Freeze of a stopped backend: %v, want ErrGone", err)
			}
		})
	}
}

// cpuOver is how much CPU cpu counts over d.
func cpuOver(cpu func() int64, d time.Duration) int64 {
	before := cpu()
	time.Sleep(d)
	return cpu() - before
}

// groupCPU is the CPU time the backend used so far: microseconds from its
// cgroup's cpu.stat, else clock ticks of its process group's processes
// from /proc (utime + stime).
func groupCPU(t *testing.T, st state) int64 {
	t.Helper()
	if st.Cgroup != "" {
		b, err := os.ReadFile(filepath.Join(st.Cgroup, "cpu.stat"))
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if v, ok := bytes.CutPrefix(sc.Bytes(), []byte("usage_usec ")); ok {
				n, _ := strconv.ParseInt(string(v), 10, 64)
				return n
			}
		}
		t.Fatalf("no usage_usec in %s/cpu.stat", st.Cgroup)
	}
	pids, err := groupMembers(st.PGID, st.Start)
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, pid := range pids {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			continue
		}
		f := bytes.Fields(b[bytes.LastIndexByte(b, ')')+1:]) // f[0] is field 3
		u, _ := strconv.ParseInt(string(f[11]), 10, 64)
		s, _ := strconv.ParseInt(string(f[12]), 10, 64)
		total += u + s
	}
	return total
}
