package process

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/runtime"
	"golang.org/x/sys/unix"
)

// BenchmarkLifecycle runs what the runtime does for one short-lived backend
// (Start, a hard Stop, Wait, Cleanup) on a program that only sleeps, and
// reports the CPU this process spent per cycle (cpu-µs/op, from getrusage:
// the runtime's own work, not the backend's). Compare builds with
// benchstat; wall time is mostly the kernel starting and reaping the child.
//
//	go test -run '^$' -bench Lifecycle -benchtime 2000x -count 6 ./runtime/process
func BenchmarkLifecycle(b *testing.B) {
	r, err := New(Config{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	port, err := FreePort()
	if err != nil {
		b.Fatal(err)
	}
	cpu := func() time.Duration {
		var ru unix.Rusage
		unix.Getrusage(unix.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	i := 0
	before := cpu()
	for b.Loop() {
		i++
		h, err := r.Start(ctx, runtime.Spec{
			BackendID: fmt.Sprintf("bk_%d", i),
			Spawn:     berth.SpawnConfig{Command: []string{"sleep", "60"}},
			Port:      port,
		})
		if err != nil {
			b.Fatal(err)
		}
		if err := r.Stop(ctx, h, "", 0); err != nil {
			b.Fatal(err)
		}
		if _, err := r.Wait(ctx, h); err != nil {
			b.Fatal(err)
		}
		if err := r.Cleanup(ctx, h); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(cpu()-before)/float64(b.N)/1e3, "cpu-µs/op")
}
