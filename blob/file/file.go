// Package file is the blob store in a local directory (URL file:DIR or
// file:///abs/dir), Berth's default. It is safe for several goroutines and
// several Berth processes on one host sharing the directory; it is not meant
// for network file systems whose flock is unreliable.
//
// Layout under DIR, one directory per key:
//
//	keys/<2 hex>/<base32 key>/lock           flock(2) target, never renamed
//	keys/<2 hex>/<base32 key>/manifest.json  fence + history (manifest.Manifest)
//	keys/<2 hex>/<base32 key>/v/<version>    one immutable file per save
//	keys/<2 hex>/<base32 key>/.tmp-*         a save being written
//
// A Put streams the body into a temp file and fsyncs it, then under the
// key's flock re-reads the manifest, checks the fence, renames the body into
// v/ and replaces the manifest by rename. The fence check and the commit are
// one critical section under the lock, so no stale write can slip in
// between; a reader reads the manifest (replaced atomically) and opens an
// immutable body, so it sees the old state or the new one.
//
// Keys never become paths: they are base32-encoded, and every file is
// reached through an os.Root, so neither a key nor a symlink planted inside
// DIR can make the store touch anything outside DIR.
package file

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path"
	"strings"
	"time"

	"github.com/berthhq/berth/blob"
	"github.com/berthhq/berth/blob/internal/manifest"
)

// Store is the file blob store.
type Store struct {
	dir  string
	root *os.Root
	opts blob.Options
}

var _ blob.Store = (*Store)(nil)

// New opens (creating it if needed) the store in dir.
func New(dir string, opts blob.Options) (*Store, error) {
	if dir == "" {
		return nil, errors.New("file: no directory given")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("file: %w", err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("file: %w", err)
	}
	if err := root.MkdirAll("keys", 0o755); err != nil {
		root.Close()
		return nil, fmt.Errorf("file: %w", err)
	}
	return &Store{dir: dir, root: root, opts: opts.WithDefaults()}, nil
}

// Open opens the store named by a file URL: file:DIR (relative or absolute),
// file:/abs/dir or file:///abs/dir.
func Open(ctx context.Context, rawURL string, opts blob.Options) (*Store, error) {
	dir, err := ParseURL(rawURL)
	if err != nil {
		return nil, err
	}
	return New(dir, opts)
}

// ParseURL returns the directory a file URL names.
func ParseURL(rawURL string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", fmt.Errorf("file: %w", err)
	}
	if u.Scheme != "file" {
		return "", fmt.Errorf("file: URL %q: scheme must be file", rawURL)
	}
	if u.Host != "" && u.Host != "localhost" {
		return "", fmt.Errorf("file: URL %q: a host is not supported; use file:DIR or file:///abs/dir", rawURL)
	}
	dir := u.Path
	if u.Opaque != "" {
		if dir, err = url.PathUnescape(u.Opaque); err != nil {
			return "", fmt.Errorf("file: URL %q: %w", rawURL, err)
		}
	}
	if dir == "" {
		return "", fmt.Errorf("file: URL %q names no directory", rawURL)
	}
	return dir, nil
}

// Dir returns the store's directory.
func (s *Store) Dir() string { return s.dir }

// Close releases the directory handle.
func (s *Store) Close() error { return s.root.Close() }

func keyDir(key string) string { return path.Join("keys", manifest.KeyPath(key)) }

// readManifest returns key's manifest, or a fresh one (exists=false) when the
// key has never been written.
func (s *Store) readManifest(key string) (m *manifest.Manifest, exists bool, err error) {
	data, err := s.root.ReadFile(path.Join(keyDir(key), "manifest.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return manifest.New(key), false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("file: read manifest of %q: %w", key, err)
	}
	m, err = manifest.Decode(key, data)
	if err != nil {
		return nil, false, fmt.Errorf("file: %w", err)
	}
	return m, true, nil
}

// writeManifest replaces key's manifest atomically and durably. Call it with
// the key locked.
func (s *Store) writeManifest(key string, m *manifest.Manifest) error {
	kd := keyDir(key)
	tmp := path.Join(kd, ".tmp-manifest-"+randomSuffix())
	if err := s.writeFileSync(tmp, m.Encode()); err != nil {
		s.root.Remove(tmp)
		return fmt.Errorf("file: write manifest of %q: %w", key, err)
	}
	if err := s.root.Rename(tmp, path.Join(kd, "manifest.json")); err != nil {
		s.root.Remove(tmp)
		return fmt.Errorf("file: write manifest of %q: %w", key, err)
	}
	if err := s.syncDir(kd); err != nil {
		return fmt.Errorf("file: write manifest of %q: %w", key, err)
	}
	return nil
}

func (s *Store) writeFileSync(name string, data []byte) error {
	f, err := s.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func (s *Store) syncDir(name string) error {
	d, err := s.root.Open(name)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// Get opens key's current state.
func (s *Store) Get(ctx context.Context, key string) (io.ReadCloser, blob.Info, error) {
	if err := blob.ValidateKey(key); err != nil {
		return nil, blob.Info{}, err
	}
	// A concurrent Put may trim the version we picked between reading the
	// manifest and opening its body; then the manifest has moved on, so
	// read it again.
	for attempt := 0; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return nil, blob.Info{}, err
		}
		m, _, err := s.readManifest(key)
		if err != nil {
			return nil, blob.Info{}, err
		}
		info, ok := m.Current()
		if !ok {
			return nil, blob.Info{}, fmt.Errorf("file: get %q: %w", key, blob.ErrNotFound)
		}
		f, err := s.root.Open(path.Join(keyDir(key), "v", info.Version))
		if errors.Is(err, fs.ErrNotExist) && attempt < 10 {
			continue
		}
		if err != nil {
			return nil, blob.Info{}, fmt.Errorf("file: get %q: %w", key, err)
		}
		return f, info, nil
	}
}

// GetVersion opens one save of key.
func (s *Store) GetVersion(ctx context.Context, key, version string) (io.ReadCloser, blob.Info, error) {
	if err := blob.ValidateKey(key); err != nil {
		return nil, blob.Info{}, err
	}
	if !blob.ValidVersion(version) {
		return nil, blob.Info{}, fmt.Errorf("file: get %q version %q: %w", key, version, blob.ErrNotFound)
	}
	m, _, err := s.readManifest(key)
	if err != nil {
		return nil, blob.Info{}, err
	}
	info, ok := m.Find(version)
	if !ok {
		return nil, blob.Info{}, fmt.Errorf("file: get %q version %q: %w", key, version, blob.ErrNotFound)
	}
	f, err := s.root.Open(path.Join(keyDir(key), "v", version))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, blob.Info{}, fmt.Errorf("file: get %q version %q: %w", key, version, blob.ErrNotFound)
	}
	if err != nil {
		return nil, blob.Info{}, fmt.Errorf("file: get %q version %q: %w", key, version, err)
	}
	return f, info, nil
}

// Put streams r into a temp file, then commits it under the key's lock if
// fence is not stale.
func (s *Store) Put(ctx context.Context, key string, fence int64, r io.Reader) (blob.Info, error) {
	if err := blob.ValidateKey(key); err != nil {
		return blob.Info{}, err
	}
	// Refuse a doomed write before spooling it. Only an optimisation: the
	// check that counts is the one under the lock.
	m, _, err := s.readManifest(key)
	if err != nil {
		return blob.Info{}, err
	}
	if err := m.Check(fence); err != nil {
		return blob.Info{}, err
	}
	kd := keyDir(key)
	if err := s.root.MkdirAll(path.Join(kd, "v"), 0o755); err != nil {
		return blob.Info{}, fmt.Errorf("file: put %q: %w", key, err)
	}
	tmp := path.Join(kd, ".tmp-"+randomSuffix())
	size, sum, err := s.spool(ctx, tmp, r)
	if err != nil {
		s.root.Remove(tmp)
		return blob.Info{}, fmt.Errorf("file: put %q: %w", key, err)
	}
	committed := false
	defer func() {
		if !committed {
			s.root.Remove(tmp)
		}
	}()

	unlock, err := s.lock(ctx, key)
	if err != nil {
		return blob.Info{}, err
	}
	defer unlock()
	m, _, err = s.readManifest(key)
	if err != nil {
		return blob.Info{}, err
	}
	now := time.Now().UTC().Truncate(time.Microsecond)
	info := blob.Info{Key: key, Version: blob.NewVersion(now), Size: size, Fence: fence, SavedAt: now, SHA256: sum}
	trimmed, err := m.Commit(info, s.opts.History)
	if err != nil {
		return blob.Info{}, err
	}
	if err := ctx.Err(); err != nil {
		return blob.Info{}, err
	}
	body := path.Join(kd, "v", info.Version)
	if err := s.root.Rename(tmp, body); err != nil {
		return blob.Info{}, fmt.Errorf("file: put %q: %w", key, err)
	}
	committed = true
	// The body's name must be durable before a manifest naming it is.
	if err := s.syncDir(path.Join(kd, "v")); err != nil {
		return blob.Info{}, fmt.Errorf("file: put %q: %w", key, err)
	}
	if err := s.writeManifest(key, m); err != nil {
		// The body stays: if the manifest did land it is current; if not,
		// the next commit's sweep removes it as unlisted.
		return blob.Info{}, err
	}
	s.sweep(key, m, trimmed)
	return info, nil
}

// spool copies r into a new file name, fsyncs it, and returns its size and
// hex SHA-256.
func (s *Store) spool(ctx context.Context, name string, r io.Reader) (int64, string, error) {
	f, err := s.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return 0, "", err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), blob.ContextReader(ctx, r))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, "", err
	}
	return n, hex.EncodeToString(h.Sum(nil)), nil
}

// sweep removes the bodies of trimmed versions, and any body the manifest
// does not list (left by a process that died between rename and manifest
// write), and temp files old enough that no live writer owns them. Call it
// with the key locked. Failures only waste disk, so they are logged.
func (s *Store) sweep(key string, m *manifest.Manifest, trimmed []string) {
	kd := keyDir(key)
	for _, v := range trimmed {
		if err := s.root.Remove(path.Join(kd, "v", v)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.opts.Logger.Warn("file blob store: remove trimmed version", "key", key, "version", v, "err", err)
		}
	}
	if d, err := s.root.Open(path.Join(kd, "v")); err == nil {
		names, _ := d.Readdirnames(-1)
		d.Close()
		for _, n := range names {
			if !m.Has(n) {
				s.root.Remove(path.Join(kd, "v", n))
			}
		}
	}
	if d, err := s.root.Open(kd); err == nil {
		ents, _ := d.ReadDir(-1)
		d.Close()
		for _, e := range ents {
			if !strings.HasPrefix(e.Name(), ".tmp-") {
				continue
			}
			if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) > staleTemp {
				s.root.Remove(path.Join(kd, e.Name()))
			}
		}
	}
}

// staleTemp is how old a temp file must be before sweep takes it for a dead
// writer's.
const staleTemp = time.Hour

// Fence raises key's fence.
func (s *Store) Fence(ctx context.Context, key string, fence int64) error {
	if err := blob.ValidateKey(key); err != nil {
		return err
	}
	// Fence 0 is every key's fence to begin with: answer without creating
	// anything (callers probe a key's fence this way).
	if m, exists, err := s.readManifest(key); err != nil || (!exists && fence <= 0) {
		return err
	} else if fence < m.Fence {
		return m.Check(fence)
	}
	if err := s.root.MkdirAll(keyDir(key), 0o755); err != nil {
		return fmt.Errorf("file: fence %q: %w", key, err)
	}
	unlock, err := s.lock(ctx, key)
	if err != nil {
		return err
	}
	defer unlock()
	m, _, err := s.readManifest(key)
	if err != nil {
		return err
	}
	changed, err := m.RaiseFence(fence)
	if err != nil || !changed {
		return err
	}
	return s.writeManifest(key, m)
}

// Versions lists key's saves, newest first.
func (s *Store) Versions(ctx context.Context, key string) ([]blob.Info, error) {
	if err := blob.ValidateKey(key); err != nil {
		return nil, err
	}
	m, _, err := s.readManifest(key)
	if err != nil {
		return nil, err
	}
	return append([]blob.Info{}, m.Versions...), nil
}

// Restore makes an earlier save current again, as a new save.
func (s *Store) Restore(ctx context.Context, key, version string, fence int64) (blob.Info, error) {
	return blob.RestoreByCopy(ctx, s, key, version, fence)
}

// Delete removes every save of key and keeps its fence.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := blob.ValidateKey(key); err != nil {
		return err
	}
	m, exists, err := s.readManifest(key)
	if err != nil || !exists {
		return err
	}
	unlock, err := s.lock(ctx, key)
	if err != nil {
		return err
	}
	defer unlock()
	if m, _, err = s.readManifest(key); err != nil {
		return err
	}
	m.Clear()
	if err := s.writeManifest(key, m); err != nil {
		return err
	}
	s.sweep(key, m, nil)
	return nil
}

// lock takes key's flock, waiting while ctx allows. The lock file is never
// replaced, so every process locks the same inode.
func (s *Store) lock(ctx context.Context, key string) (unlock func(), err error) {
	f, err := s.root.OpenFile(path.Join(keyDir(key), "lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("file: lock %q: %w", key, err)
	}
	if err := flock(ctx, f); err != nil {
		f.Close()
		return nil, fmt.Errorf("file: lock %q: %w", key, err)
	}
	// Closing the descriptor releases the flock.
	return func() { f.Close() }, nil
}

func randomSuffix() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
