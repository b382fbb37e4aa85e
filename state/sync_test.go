package state

import (
	"context"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/blob"
	"github.com/berthhq/berth/blob/file"
	"github.com/berthhq/berth/runtime"
)

// liveSet holds the backends the test says are live, as the Manager does;
// a stale holder may still be among them (a replica cut off from the store
// has not heard it lost its key).
type liveSet struct {
	mu sync.Mutex
	bs map[string]*berth.Backend
}

func (l *liveSet) LiveBackend(id string) (*berth.Backend, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.bs[id]
	return b, ok
}
func (l *liveSet) KeyLive(string) bool { return true }
func (l *liveSet) Backend(_ context.Context, id string) (*berth.Backend, error) {
	if b, ok := l.LiveBackend(id); ok {
		return b, nil
	}
	return nil, berth.ErrNotFound
}

// TestDirSync: a directory kept through the backend API (mode dir of a
// runtime set with SetDirSync) is restored by the key's next holder, the
// final save of Run lands, and a stale holder's save is refused by the
// fence and changes nothing.
func TestDirSync(t *testing.T) {
	blobs, err := file.New(t.TempDir(), blob.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { blobs.Close() })
	live := &liveSet{bs: map[string]*berth.Backend{}}
	s, err := New(Config{Blobs: blobs, Holders: live, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	srv := httptest.NewServer(s.BackendAPI())
	t.Cleanup(srv.Close)
	s.SetBackendAPIURL("pods", srv.URL)
	s.SetDirSync("pods")
	ctx := context.Background()

	prepare := func(id string, fence int64) *DirSync {
		b := holder(id, "k", fence, berth.StateModeDir)
		b.Runtime, b.Secret = "pods", "secret-"+id
		live.mu.Lock()
		live.bs[id] = b
		live.mu.Unlock()
		spec := runtime.Spec{BackendID: id, Env: map[string]string{}}
		if err := s.Prepare(ctx, b, &spec); err != nil {
			t.Fatalf("Prepare %s: %v", id, err)
		}
		if spec.StateDir != "" || spec.Env["BERTH_STATE_URL"] == "" {
			t.Fatalf("Prepare %s: StateDir %q, BERTH_STATE_URL %q; want no local directory and a URL", id, spec.StateDir, spec.Env["BERTH_STATE_URL"])
		}
		d := &DirSync{URL: spec.Env["BERTH_STATE_URL"], Secret: b.Secret, Dir: filepath.Join(t.TempDir(), id), Interval: time.Hour}
		if err := d.Restore(ctx); err != nil {
			t.Fatalf("Restore %s: %v", id, err)
		}
		return d
	}
	write := func(dir, name, data string) {
		t.Helper()
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o777)
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	read := func(dir, name string) string {
		b, _ := os.ReadFile(filepath.Join(dir, name))
		return string(b)
	}

	a := prepare("a", 1)
	if entries, _ := os.ReadDir(a.Dir); len(entries) != 0 {
		t.Fatalf("a fresh key restored %d entries", len(entries))
	}
	write(a.Dir, "sub/doc", "by a")
	if err := a.Save(ctx, false); err != nil {
		t.Fatalf("a's save: %v", err)
	}

	b := prepare("b", 2)
	if got := read(b.Dir, "sub/doc"); got != "by a" {
		t.Fatalf("b restored sub/doc %q, want %q", got, "by a")
	}
	saved := current(t, s, "k")

	write(a.Dir, "sub/doc", "by a, stale")
	if err := a.Save(ctx, false); !errors.Is(err, ErrRefused) {
		t.Fatalf("the stale holder's save: %v, want ErrRefused", err)
	}
	if got := current(t, s, "k"); got != saved {
		t.Error("the stale holder's refused save changed the key's state")
	}

	// Run: nothing changed, nothing saved; then the final save on cancel.
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- b.Run(runCtx, 10*time.Second) }()
	write(b.Dir, "late", "written before the stop")
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("b's Run: %v", err)
	}
	c := prepare("c", 3)
	if got := read(c.Dir, "late"); got != "written before the stop" {
		t.Errorf("c restored late %q: the final save of Run did not land", got)
	}
	if got := read(c.Dir, "sub/doc"); got != "by a" {
		t.Errorf("c restored sub/doc %q, want %q", got, "by a")
	}
}
