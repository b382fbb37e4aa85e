package sqlite_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/store"
	"github.com/berthhq/berth/store/sqlite"
	"github.com/berthhq/berth/store/storetest"
)

func openAt(t testing.TB, path string) *sqlite.Store {
	t.Helper()
	s, err := sqlite.Open(path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func TestStore(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		return openAt(t, filepath.Join(t.TempDir(), "berth.db"))
	})
}

func TestStore_Reopen(t *testing.T) {
	// A nested, not yet existing directory: Open creates it.
	path := filepath.Join(t.TempDir(), "data", "nested", "berth.db")
	storetest.RunReopen(t, func(t *testing.T) store.Store { return openAt(t, path) })
}

func TestOpen_BadPath(t *testing.T) {
	for _, path := range []string{"", ":memory:"} {
		if s, err := sqlite.Open(path); err == nil {
			s.Close()
			t.Errorf("Open(%q): no error", path)
		}
	}
}

// A path is a path, whatever it holds: '?', '#', '%' and spaces are the
// file's name, not the driver's parameters, and a relative path is
// relative to the working directory.
func TestOpen_OddPaths(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	for _, path := range []string{
		filepath.Join(dir, "notes#1", "berth.db"),
		filepath.Join(dir, "what?mode=ro", "berth.db"),
		filepath.Join(dir, "100%25 sure", "b e r t h.db"),
		filepath.Join("rel", "berth.db"),
	} {
		s, err := sqlite.Open(path)
		if err != nil {
			t.Errorf("Open(%q): %v", path, err)
			continue
		}
		b := &berth.Backend{ID: "bk_odd", Key: "k", State: berth.StateScheduled, Spawn: berth.SpawnConfig{Command: []string{"x"}}, CreatedAt: time.Now().UTC()}
		if _, _, err := s.CreateBackend(t.Context(), b); err != nil {
			t.Errorf("Open(%q): CreateBackend: %v", path, err)
		}
		s.Close()
		if _, err := os.Stat(path); err != nil {
			t.Errorf("Open(%q) wrote elsewhere: %v", path, err)
		}
	}
}

func TestStore_AddEvent(t *testing.T) {
	ctx := t.Context()
	s := openAt(t, filepath.Join(t.TempDir(), "berth.db"))
	defer s.Close()
	b := &berth.Backend{ID: "bk_1", Key: "doc-1", Node: "node-a", CreatedAt: time.Now()}
	if _, _, err := s.CreateBackend(ctx, b); err != nil {
		t.Fatal(err)
	}
	ch, err := s.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.AddEvent(ctx, "bk_1", "pulling image"); err != nil {
		t.Fatal(err)
	}
	es, err := s.Events(ctx, "bk_1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 2 || es[1].State != berth.StateScheduled || es[1].Message != "pulling image" {
		t.Errorf("events = %+v; want scheduled, then the note in state scheduled", es)
	}
	// The note is a change like any other event.
	want := store.Change{Seq: es[1].Seq, BackendID: "bk_1", Key: "doc-1", Node: "node-a", State: berth.StateScheduled}
	select {
	case c := <-ch:
		if c != want {
			t.Errorf("change = %+v, want %+v", c, want)
		}
	case <-time.After(5 * time.Second):
		t.Error("no change for the note")
	}
	if err := s.AddEvent(ctx, "bk_missing", "x"); !errors.Is(err, berth.ErrNotFound) {
		t.Errorf("AddEvent of a missing backend: %v, want ErrNotFound", err)
	}
}

// BenchmarkSpawnCycle measures a backend's whole life in the store: create,
// then starting, ready, terminating, terminated. Keys repeat, so taking a key
// exercises both a new key and a freed one.
func BenchmarkSpawnCycle(b *testing.B) {
	s := openAt(b, filepath.Join(b.TempDir(), "berth.db"))
	defer s.Close()
	i := 0
	for b.Loop() {
		if err := spawnCycle(b.Context(), s, fmt.Sprintf("bk_%d", i), fmt.Sprintf("doc-%d", i%1000)); err != nil {
			b.Fatal(err)
		}
		i++
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "spawns/s")
}

// BenchmarkSpawnCycleParallel is BenchmarkSpawnCycle from many goroutines
// (16 per CPU), as a busy server runs it: writes queue for the one write
// connection, and the queued ones are committed together.
func BenchmarkSpawnCycleParallel(b *testing.B) {
	s := openAt(b, filepath.Join(b.TempDir(), "berth.db"))
	defer s.Close()
	var n atomic.Int64
	b.SetParallelism(16)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			if err := spawnCycle(b.Context(), s, fmt.Sprintf("bk_%d", i), fmt.Sprintf("doc-%d", i)); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "spawns/s")
}

func spawnCycle(ctx context.Context, s *sqlite.Store, id, key string) error {
	bk := &berth.Backend{
		ID: id, Key: key, Runtime: "process", Secret: "secret",
		Spawn:     berth.SpawnConfig{Command: []string{"./server"}, Env: map[string]string{"A": "1"}},
		CreatedAt: time.Now(),
	}
	if _, created, err := s.CreateBackend(ctx, bk); err != nil || !created {
		return fmt.Errorf("CreateBackend %s: created %v, %v", id, created, err)
	}
	for _, to := range []berth.State{berth.StateStarting, berth.StateReady, berth.StateTerminating, berth.StateTerminated} {
		if _, err := s.Transition(ctx, id, store.Transition{To: to, Reason: berth.ReasonIdle}); err != nil {
			return err
		}
	}
	return nil
}

// BenchmarkCreateBackend measures CreateBackend alone: "new" takes a free
// key, "held" finds the key held and returns its holder (a warm connect's
// write path when the key is not in memory).
func BenchmarkCreateBackend(b *testing.B) {
	newBackend := func(i int, key string) *berth.Backend {
		return &berth.Backend{
			ID: fmt.Sprintf("bk_%d", i), Key: key, Runtime: "process", Secret: "secret", Node: "local",
			Spawn:     berth.SpawnConfig{Command: []string{"./server"}, Env: map[string]string{"A": "1"}},
			CreatedAt: time.Now(),
		}
	}
	b.Run("new", func(b *testing.B) {
		s := openAt(b, filepath.Join(b.TempDir(), "berth.db"))
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
		s := openAt(b, filepath.Join(b.TempDir(), "berth.db"))
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
