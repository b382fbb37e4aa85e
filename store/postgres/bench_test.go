package postgres_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/store/postgres"
)

// BenchmarkCreateBackend measures CreateBackend alone, as sqlite's does:
// "new" takes a free key, "held" finds the key held.
func BenchmarkCreateBackend(b *testing.B) {
	newBackend := func(i int, key string) *berth.Backend {
		return &berth.Backend{
			ID: fmt.Sprintf("bk_%d", i), Key: key, Runtime: "process", Secret: "secret", Node: "local",
			Spawn:     berth.SpawnConfig{Command: []string{"./server"}, Env: map[string]string{"A": "1"}},
			CreatedAt: time.Now(),
		}
	}
	openB := func(b *testing.B) *postgres.Store {
		s, err := postgres.Open(b.Context(), pgtestURL(b))
		if err != nil {
			b.Fatal(err)
		}
		return s
	}
	b.Run("new", func(b *testing.B) {
		s := openB(b)
		defer s.Close()
		i := 0
		for b.Loop() {
			if _, created, err := s.CreateBackend(b.Context(), newBackend(i, fmt.Sprintf("doc-%d", i))); err != nil || !created {
				b.Fatalf("created %v, %v", created, err)
			}
			i++
		}
	})
	b.Run("held", func(b *testing.B) {
		s := openB(b)
		defer s.Close()
		if _, _, err := s.CreateBackend(b.Context(), newBackend(-1, "doc")); err != nil {
			b.Fatal(err)
		}
		i := 0
		for b.Loop() {
			if _, created, err := s.CreateBackend(b.Context(), newBackend(i, "doc")); err != nil || created {
				b.Fatalf("created %v, %v", created, err)
			}
			i++
		}
	})
}
