// Package state keeps backends' state across sessions. It is the Manager's
// state layer (server.StateLayer) and serves the backend API: backends GET
// and PUT their state (mode blob), or get a directory that is restored
// before they start and saved while and after they run (mode dir), or a
// per-key directory under a volume root (mode volume).
//
// Every write is fenced: a backend may write only while it is the live holder
// of its key, and the blob store itself refuses a write whose fencing token
// is older than the key's fence, in the same atomic step as the write.
// Writes the blob store cannot take right now are spooled to local disk and
// retried; the key stays held until the spool is empty, so a terminated
// backend's final state is always durable.
package state

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/blob"
	"github.com/berthhq/berth/runtime"
)

// Holders answers who holds what, from the Manager's memory; Backend
// also finds terminated backends in the store.
type Holders interface {
	// LiveBackend returns a backend that is live (not terminated) here.
	LiveBackend(id string) (*berth.Backend, bool)
	// Backend returns any backend's record, live or terminated, with its
	// secret; berth.ErrNotFound (wrapped) when there is none.
	Backend(ctx context.Context, id string) (*berth.Backend, error)
	// KeyLive reports whether a live backend holds key.
	KeyLive(key string) bool
}

// Config configures the state Service.
type Config struct {
	Blobs   blob.Store
	Holders Holders
	// Dir holds the spool and mode-dir working directories.
	Dir string
	// VolumeRoot is where mode-volume keys get their directories (may be an
	// NFS/EFS mount). Default Dir/volumes.
	VolumeRoot string
	// BackendAPIURL is the backend API's base URL per runtime name, as the
	// backend sees it (a container reaches the host differently).
	BackendAPIURL map[string]string
	// MaxStateBytes bounds one saved state (default 64 MiB).
	MaxStateBytes int64
	Logger        *slog.Logger
	// OnSaveError is told about every failed save (metrics).
	OnSaveError func()
}

// DefaultMaxStateBytes bounds a state when Config.MaxStateBytes is 0.
const DefaultMaxStateBytes = 64 << 20

// Service implements the state modes.
type Service struct {
	cfg     Config
	log     *slog.Logger
	spool   *spool
	writers *writers
	// noSecret is what a secret sent for an unknown backend is compared
	// with, so that it takes as long as for a known one.
	noSecret string

	mu   sync.Mutex
	dirs map[string]*dirSaver // mode dir, by backend id
	// syncs are the runtimes whose backends keep their mode-dir
	// directories themselves, through the backend API (DirSync).
	syncs map[string]bool
	ctx   context.Context
	stop  context.CancelFunc
	wg    sync.WaitGroup
	kickC chan struct{}
}

// New makes a Service and starts its spool retrier; Close stops it.
func New(cfg Config) (*Service, error) {
	if cfg.Blobs == nil || cfg.Holders == nil || cfg.Dir == "" {
		return nil, errors.New("state: blobs, holders and dir are required")
	}
	if cfg.MaxStateBytes == 0 {
		cfg.MaxStateBytes = DefaultMaxStateBytes
	}
	if cfg.VolumeRoot == "" {
		cfg.VolumeRoot = filepath.Join(cfg.Dir, "volumes")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.OnSaveError == nil {
		cfg.OnSaveError = func() {}
	}
	for _, d := range []string{cfg.Dir, cfg.VolumeRoot} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("state: %w", err)
		}
	}
	sp, err := newSpool(filepath.Join(cfg.Dir, "spool"), cfg.Blobs)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Service{cfg: cfg, log: cfg.Logger, spool: sp, writers: newWriters(), dirs: make(map[string]*dirSaver),
		ctx: ctx, stop: cancel, kickC: make(chan struct{}, 1), noSecret: rand.Text()}
	s.wg.Add(1)
	go s.retry()
	return s, nil
}

// SetBackendAPIURL sets the backend API's URL as backends of runtime rt
// reach it. Call before serving.
func (s *Service) SetBackendAPIURL(rt, url string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cfg.BackendAPIURL == nil {
		s.cfg.BackendAPIURL = make(map[string]string)
	}
	s.cfg.BackendAPIURL[rt] = url
}

// SetDirSync says that backends of runtime rt share no directory with
// Berth: in mode dir they get BERTH_STATE_URL, and the runtime runs a
// DirSync beside them that restores and saves their directory through the
// backend API (the kubernetes runtime: an init container and a sidecar).
// Call before serving, after SetBackendAPIURL.
func (s *Service) SetDirSync(rt string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.syncs == nil {
		s.syncs = make(map[string]bool)
	}
	s.syncs[rt] = true
}

func (s *Service) dirSync(rt string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.syncs[rt]
}

// Close stops background work. Spooled states stay on disk for the next start.
func (s *Service) Close() {
	s.stop()
	s.mu.Lock()
	for _, d := range s.dirs {
		d.cancel()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// Prepare runs before a backend starts (server.StateLayer): it raises the
// key's fence to the new holder's token (so no earlier holder can write any
// more) and prepares the backend's state mode.
func (s *Service) Prepare(ctx context.Context, b *berth.Backend, spec *runtime.Spec) error {
	mode := b.Spawn.StateMode()
	if mode == berth.StateModeNone {
		return nil
	}
	if b.Key == "" {
		return &berth.FieldError{Field: "spawn.state.mode", Message: "needs a key: state is saved per key"}
	}
	switch mode {
	case berth.StateModeVolume:
		dir, err := VolumeDir(s.cfg.VolumeRoot, b.Key)
		if err != nil {
			return err
		}
		lock, err := volumeLock(dir)
		if err != nil {
			return err
		}
		spec.StateDir = dir
		spec.VolumeLock = lock
		spec.Env["BERTH_STATE_DIR"] = dir
		return nil
	}
	// A spooled save from the previous holder must land before the fence
	// moves past it, or it would be refused and lost.
	if err := s.spool.flush(ctx, b.Key); err != nil {
		return fmt.Errorf("an earlier save of key %q is not durable yet: %w", b.Key, err)
	}
	if err := s.cfg.Blobs.Fence(ctx, b.Key, b.FencingToken); err != nil {
		return fmt.Errorf("fence key %q at %d: %w", b.Key, b.FencingToken, err)
	}
	switch {
	case mode == berth.StateModeBlob, mode == berth.StateModeDir && s.dirSync(b.Runtime):
		s.mu.Lock()
		base, ok := s.cfg.BackendAPIURL[b.Runtime]
		s.mu.Unlock()
		if !ok {
			return fmt.Errorf("state: backends of runtime %s cannot reach the backend API", b.Runtime)
		}
		spec.Env["BERTH_STATE_URL"] = strings.TrimRight(base, "/") + "/v1/backends/" + b.ID + "/state"
	case mode == berth.StateModeDir:
		d, err := s.startDir(ctx, b)
		if err != nil {
			return err
		}
		spec.StateDir = d.dir
		spec.Env["BERTH_STATE_DIR"] = d.dir
	}
	return nil
}

// SaveFinal runs after a backend exited (server.StateLayer): the final save.
// It returns an error while the state is not durable; the Manager retries
// and keeps the key held meanwhile.
func (s *Service) SaveFinal(ctx context.Context, b *berth.Backend) error {
	s.writers.close(b.ID)
	switch b.Spawn.StateMode() {
	case berth.StateModeDir:
		s.mu.Lock()
		d := s.dirs[b.ID]
		s.mu.Unlock()
		if d == nil {
			// Berth restarted since the backend started: its directory is
			// still on disk and holds the final state.
			d = s.dirSaver(b)
			if _, err := os.Stat(d.dir); err != nil {
				d = nil
			} else {
				close(d.done)
				s.mu.Lock()
				s.dirs[b.ID] = d
				s.mu.Unlock()
			}
		}
		if d != nil {
			if err := d.finish(ctx); err != nil {
				return err
			}
			s.mu.Lock()
			delete(s.dirs, b.ID)
			s.mu.Unlock()
			os.RemoveAll(d.dir)
		}
		return s.spool.flush(ctx, b.Key)
	case berth.StateModeBlob:
		return s.spool.flush(ctx, b.Key)
	}
	return nil
}

// Resume resumes periodic snapshots of a mode-dir backend that a
// restarted Berth re-adopted.
func (s *Service) Resume(ctx context.Context, b *berth.Backend) error {
	if b.Spawn.StateMode() != berth.StateModeDir || s.dirSync(b.Runtime) {
		return nil // a DirSync beside the backend saves its directory
	}
	d := s.dirSaver(b)
	if _, err := os.Stat(d.dir); err != nil {
		return fmt.Errorf("state: directory of %s: %w", b.ID, err)
	}
	d.lastSum = 0 // unknown: take the next snapshot
	s.mu.Lock()
	s.dirs[b.ID] = d
	s.mu.Unlock()
	go d.loop(d.ctx, b.Spawn.SaveInterval())
	return nil
}

// Save stores a backend's new state: spooled to local disk first, then put
// into the blob store with the backend's fencing token. It returns
// (info, false, nil) when stored, (_, true, nil) when the blob store is down
// and the state waits in the spool, and an error wrapping blob.ErrFenced when
// the writer no longer holds the key.
func (s *Service) Save(ctx context.Context, b *berth.Backend, r io.Reader) (blob.Info, bool, error) {
	info, err := s.spool.save(ctx, b.Key, b.FencingToken, r, s.cfg.MaxStateBytes)
	switch {
	case err == nil:
		return info, false, nil
	case errors.Is(err, blob.ErrFenced), errors.Is(err, ErrTooLarge):
		return blob.Info{}, false, err
	case !errors.Is(err, errUpload):
		return blob.Info{}, false, err
	}
	s.cfg.OnSaveError()
	s.log.Warn("state save spooled; blob store unavailable", "key", b.Key, "backend", b.ID, "err", err)
	s.kick()
	return blob.Info{}, true, nil
}

// Load opens a key's current state: a spooled save if one is waiting, else
// the blob store's. Returns blob.ErrNotFound when there is none.
func (s *Service) Load(ctx context.Context, key string) (io.ReadCloser, error) {
	if f, err := s.spool.open(key); err == nil {
		return f, nil
	}
	rc, _, err := s.cfg.Blobs.Get(ctx, key)
	return rc, err
}

func (s *Service) kick() {
	select {
	case s.kickC <- struct{}{}:
	default:
	}
}

// retry uploads spooled states with backoff until the blob store takes them.
func (s *Service) retry() {
	defer s.wg.Done()
	backoff := 250 * time.Millisecond
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		case <-s.kickC:
		}
		keys, err := s.spool.pending()
		if err != nil {
			s.log.Error("list spooled states", "err", err)
		}
		failed := false
		for _, key := range keys {
			if _, err := s.spool.upload(s.ctx, key); err != nil && !errors.Is(err, errNothingSpooled) {
				if errors.Is(err, blob.ErrFenced) {
					s.log.Warn("spooled state refused: a newer holder owns the key", "key", key)
					continue
				}
				failed = true
				s.cfg.OnSaveError()
				s.log.Warn("spooled state upload failed; will retry", "key", key, "in", backoff, "err", err)
			}
		}
		if failed {
			t.Reset(backoff)
			backoff = min(backoff*2, 15*time.Second)
		} else {
			backoff = 250 * time.Millisecond
			t.Reset(time.Minute)
		}
	}
}

// VolumeDir returns (and creates) key's directory under root. Keys are
// encoded into one path segment that can never be "." or "..", and the
// result is checked after resolving symlinks, so no key escapes root.
func VolumeDir(root, key string) (string, error) {
	if err := berth.ValidateKey(key); err != nil {
		return "", &berth.FieldError{Field: "key", Message: err.Error()}
	}
	root, err := filepath.Abs(root)
	if err != nil {
		return "", err
	}
	if r, err := filepath.EvalSymlinks(root); err == nil {
		root = r
	}
	dir := filepath.Join(root, "k-"+url.PathEscape(key))
	if fi, err := os.Lstat(dir); err == nil && fi.Mode()&os.ModeSymlink != 0 {
		return "", fmt.Errorf("state: volume for key %q is a symlink; refusing to follow it", key)
	}
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return "", fmt.Errorf("state: volume for key %q: %w", key, err)
	}
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return "", err
	}
	if filepath.Dir(real) != root {
		return "", fmt.Errorf("state: volume for key %q resolves outside the volume root", key)
	}
	return real, nil
}

// volumeLock returns the lock file of the volume dir (made by VolumeDir)
// that the runtime hands to the backend (runtime.Spec.VolumeLock), in
// root/.locks: no key's directory is named there, as every one starts with
// "k-".
func volumeLock(dir string) (string, error) {
	locks := filepath.Join(filepath.Dir(dir), ".locks")
	if err := os.MkdirAll(locks, 0o700); err != nil {
		return "", fmt.Errorf("state: volume locks: %w", err)
	}
	return filepath.Join(locks, filepath.Base(dir)), nil
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
