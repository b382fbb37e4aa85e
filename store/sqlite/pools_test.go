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
// claims a ready pooled backend for a new key.
func BenchmarkClaimBackend(b *testing.B) {
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
		if _, claimed, err := s.ClaimBackend(b.Context(), fmt.Sprintf("bk_%d", i), fmt.Sprintf("doc-%d", i), ""); err != nil || !claimed {
			b.Fatalf("claimed %v, %v", claimed, err)
		}
		i++
	}
}
