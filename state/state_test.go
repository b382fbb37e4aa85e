package state

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/blob"
	"github.com/berthhq/berth/blob/file"
	"github.com/berthhq/berth/runtime"
	"github.com/berthhq/berth/server"
)

var _ server.StateLayer = (*Service)(nil)

// allLive says every backend is live: the test plays the Manager.
type allLive struct{}

func (allLive) LiveBackend(string) (*berth.Backend, bool) { return nil, false }
func (allLive) KeyLive(string) bool                       { return true }
func (allLive) Backend(context.Context, string) (*berth.Backend, error) {
	return nil, berth.ErrNotFound
}

// flaky is a blob store whose Puts fail while down is set.
type flaky struct {
	blob.Store
	down atomic.Bool
}

func (f *flaky) Put(ctx context.Context, key string, fence int64, r io.Reader) (blob.Info, error) {
	if f.down.Load() {
		io.Copy(io.Discard, r)
		return blob.Info{}, errors.New("connection refused")
	}
	return f.Store.Put(ctx, key, fence, r)
}

func newService(t *testing.T) (*Service, *flaky) {
	t.Helper()
	fs, err := file.New(t.TempDir(), blob.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fs.Close() })
	blobs := &flaky{Store: fs}
	s, err := New(Config{Blobs: blobs, Holders: allLive{}, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s, blobs
}

func holder(id, key string, fence int64, mode berth.StateMode) *berth.Backend {
	return &berth.Backend{ID: id, Key: key, FencingToken: fence, Runtime: "process",
		Spawn: berth.SpawnConfig{Command: []string{"x"}, State: berth.StateConfig{Mode: mode, SaveIntervalSeconds: 3600}}}
}

func before(t *testing.T, s *Service, b *berth.Backend) runtime.Spec {
	t.Helper()
	spec := runtime.Spec{BackendID: b.ID, Env: map[string]string{}}
	if err := s.Prepare(context.Background(), b, &spec); err != nil {
		t.Fatalf("Prepare of %s: %v", b.ID, err)
	}
	return spec
}

func current(t *testing.T, s *Service, key string) string {
	t.Helper()
	rc, err := s.Load(context.Background(), key)
	if err != nil {
		t.Fatalf("load %q: %v", key, err)
	}
	defer rc.Close()
	dir := t.TempDir()
	if err := extract(rc, dir); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "doc"))
	return string(b)
}

// Mode dir: once a newer holder has the key, an older holder that still
// runs (one a crashed Berth left) can change neither the newer holder's
// directory (each backend has its own) nor the key's saved state: its
// snapshots are refused by fencing, and a snapshot of the newer holder
// waiting in the spool (blob store down) is neither replaced nor lost.
func TestService_DirStaleHolder(t *testing.T) {
	ctx := context.Background()
	s, blobs := newService(t)
	a := holder("bk_a", "doc", 1, berth.StateModeDir)
	dirA := before(t, s, a).StateDir
	os.WriteFile(filepath.Join(dirA, "doc"), []byte("a1"), 0o600)
	if err := s.dirSaver(a).save(ctx); err != nil {
		t.Fatalf("A's snapshot while it holds the key: %v", err)
	}

	b := holder("bk_b", "doc", 2, berth.StateModeDir)
	dirB := before(t, s, b).StateDir
	if dirB == dirA {
		t.Fatalf("A and B share the directory %s", dirA)
	}
	if got, _ := os.ReadFile(filepath.Join(dirB, "doc")); string(got) != "a1" {
		t.Fatalf("B restored %q, want A's last save a1", got)
	}

	os.WriteFile(filepath.Join(dirA, "doc"), []byte("a2 (stale)"), 0o600)
	if err := s.dirSaver(a).save(ctx); !errors.Is(err, blob.ErrFenced) {
		t.Errorf("stale A's snapshot: %v, want ErrFenced", err)
	}
	if got := current(t, s, "doc"); got != "a1" {
		t.Errorf("saved state %q after stale A's snapshot, want a1", got)
	}
	if got, _ := os.ReadFile(filepath.Join(dirB, "doc")); string(got) != "a1" {
		t.Errorf("B's directory holds %q after A wrote its own, want a1", got)
	}

	// B's snapshot waits in the spool; A's stale one must not replace it.
	blobs.down.Store(true)
	os.WriteFile(filepath.Join(dirB, "doc"), []byte("b1"), 0o600)
	if _, spooled, err := s.Save(ctx, b, archiveOf(t, dirB)); err != nil || !spooled {
		t.Fatalf("B's save with the blob store down: spooled %v, %v; want spooled", spooled, err)
	}
	if _, _, err := s.Save(ctx, a, archiveOf(t, dirA)); !errors.Is(err, blob.ErrFenced) {
		t.Errorf("stale A's save over B's spooled one: %v, want ErrFenced", err)
	}
	blobs.down.Store(false)
	if err := s.spool.flush(ctx, "doc"); err != nil {
		t.Fatalf("flush: %v", err)
	}
	if got := current(t, s, "doc"); got != "b1" {
		t.Errorf("saved state %q once the blob store is back, want B's b1", got)
	}
}

func archiveOf(t *testing.T, dir string) io.Reader {
	t.Helper()
	var b strings.Builder
	if err := archive(dir, &b); err != nil {
		t.Fatal(err)
	}
	return strings.NewReader(b.String())
}

// Mode volume: every holder of a key gets the same directory and a lock
// file beside it, out of any key's reach, for the runtime to hand to the
// backend (runtime.Spec.VolumeLock).
func TestService_VolumeLock(t *testing.T) {
	s, _ := newService(t)
	a := before(t, s, holder("bk_a", "team/doc", 1, berth.StateModeVolume))
	b := before(t, s, holder("bk_b", "team/doc", 2, berth.StateModeVolume))
	other := before(t, s, holder("bk_c", "team/doc.lock", 1, berth.StateModeVolume))
	if a.StateDir != b.StateDir || a.VolumeLock != b.VolumeLock {
		t.Errorf("holders of one key got %s (lock %s) and %s (lock %s), want the same", a.StateDir, a.VolumeLock, b.StateDir, b.VolumeLock)
	}
	if a.VolumeLock == "" || strings.HasPrefix(a.VolumeLock, a.StateDir+string(filepath.Separator)) {
		t.Errorf("lock %q: want one outside the volume %s, which the backend could remove", a.VolumeLock, a.StateDir)
	}
	for _, p := range []string{other.StateDir, other.VolumeLock} {
		if p == a.VolumeLock || p == a.StateDir {
			t.Errorf("key team/doc.lock got %s, which is team/doc's volume or lock", p)
		}
	}
}
