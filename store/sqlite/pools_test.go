package sqlite_test

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/store"
)

// BenchmarkClaimBackend measures ClaimBackend, a claim's store write (on
// a connect's path), beside CreateBackend "new" above: each iteration
// claims a ready pooled backend for a new key. In "after=idle" the
// process sleeps 20 ms (untimed) before each claim, as a server does
// between connects: the write then runs with cold caches, which is what a
// claim costs on pool-connect's path (BENCHMARKS.md, "Warm pools").
func BenchmarkClaimBackend(b *testing.B) {
	for _, idle := range []time.Duration{0, 20 * time.Millisecond} {
		name := "after=claim"
		if idle > 0 {
			name = "after=idle"
		}
		b.Run(name, func(b *testing.B) { benchClaims(b, idle) })
	}
}

func benchClaims(b *testing.B, idle time.Duration) {
	s := openAt(b, filepath.Join(b.TempDir(), "berth.db"))
	defer s.Close()
	const pooled = 4096
	for i := range pooled {
		bk := &berth.Backend{ID: fmt.Sprintf("bk_%d", i), Pool: "web", Runtime: "process", Secret: "secret", Node: "local",
			Spawn: berth.SpawnConfig{Command: []string{"./server"}, Env: map[string]string{"A": "1"}}, CreatedAt: time.Now()}
		if _, _, err := s.CreateBackend(b.Context(), bk); err != nil {
			b.Fatal(err)
		}
		for _, to := range []berth.State{berth.StateStarting, berth.StateReady} {
			if _, err := s.Transition(b.Context(), bk.ID, store.Transition{To: to}); err != nil {
				b.Fatal(err)
			}
		}
	}
	i := 0
	for b.Loop() {
		if i == pooled {
			b.Fatalf("more than %d iterations: raise pooled", pooled)
		}
		if idle > 0 {
			b.StopTimer()
			time.Sleep(idle)
			b.StartTimer()
		}
		if _, claimed, err := s.ClaimBackend(b.Context(), fmt.Sprintf("bk_%d", i), fmt.Sprintf("doc-%d", i), ""); err != nil || !claimed {
			b.Fatalf("claimed %v, %v", claimed, err)
		}
		i++
	}
}
