package state

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/berthhq/berth/blob"
)

var (
	errNothingSpooled = errors.New("nothing spooled")
	// errUpload marks a failure of the blob store (not of the local spool):
	// the state is safe on disk and will be retried.
	errUpload = errors.New("blob store")
)

// spool keeps at most one not-yet-uploaded save per key on local disk,
// fsynced, so a save the blob store could not take survives a Berth restart.
// A newer save of a key replaces the older one: the blob store only ever
// needs the latest state of a holder.
type spool struct {
	dir   string
	blobs blob.Store
	locks sync.Map // key → *sync.Mutex; serialises writes and uploads per key
}

func newSpool(dir string, blobs blob.Store) (*spool, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state: spool: %w", err)
	}
	return &spool{dir: dir, blobs: blobs}, nil
}

func (s *spool) lock(key string) func() {
	m, _ := s.locks.LoadOrStore(key, new(sync.Mutex))
	mu := m.(*sync.Mutex)
	mu.Lock()
	return mu.Unlock
}

// name is the pending file of key at fence: hex keeps any key one safe
// path segment.
func (s *spool) name(key string, fence int64) string {
	return filepath.Join(s.dir, hex.EncodeToString([]byte(key))+"-"+strconv.FormatInt(fence, 10)+".pending")
}

// find returns key's pending file and its fence, or errNothingSpooled.
func (s *spool) find(key string) (string, int64, error) {
	matches, err := filepath.Glob(filepath.Join(s.dir, hex.EncodeToString([]byte(key))+"-*.pending"))
	if err != nil || len(matches) == 0 {
		return "", 0, errNothingSpooled
	}
	path := matches[len(matches)-1]
	base := strings.TrimSuffix(filepath.Base(path), ".pending")
	fence, err := strconv.ParseInt(base[strings.LastIndexByte(base, '-')+1:], 10, 64)
	if err != nil {
		return "", 0, fmt.Errorf("state: spool file %s: bad name", path)
	}
	return path, fence, nil
}

// ErrTooLarge is returned when a state exceeds the configured bound.
var ErrTooLarge = errors.New("state is larger than the limit")

// save stores r as key's pending save, replacing any older one, and uploads
// it. The body is spooled to disk first, outside the key's lock, so a slow
// writer holds up nobody; the rename and the upload happen under the lock,
// so every save is uploaded by its own call, in order.
func (s *spool) save(ctx context.Context, key string, fence int64, r io.Reader, limit int64) (blob.Info, error) {
	var rnd [8]byte
	rand.Read(rnd[:])
	tmp := filepath.Join(s.dir, "tmp-"+hex.EncodeToString(rnd[:]))
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return blob.Info{}, fmt.Errorf("state: spool: %w", err)
	}
	defer os.Remove(tmp) // no-op once renamed
	n, err := io.Copy(f, io.LimitReader(r, limit+1))
	if err == nil && n > limit {
		err = ErrTooLarge
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return blob.Info{}, fmt.Errorf("state: spool %q: %w", key, err)
	}
	unlock := s.lock(key)
	defer unlock()
	if old, oldFence, err := s.find(key); err == nil {
		if oldFence > fence {
			// A newer holder's save waits here: a stale writer must
			// neither replace it nor land.
			return blob.Info{}, &blob.FencedError{Key: key, Fence: fence, Current: oldFence}
		}
		os.Remove(old) // an older save that never reached the store: superseded
	}
	if err := os.Rename(tmp, s.name(key, fence)); err != nil {
		return blob.Info{}, fmt.Errorf("state: spool %q: %w", key, err)
	}
	syncDir(s.dir)
	return s.uploadLocked(ctx, key)
}

// upload puts key's pending save into the blob store and drops it from the
// spool once stored — or once refused for a stale fence, since a stale
// writer's state must never land.
func (s *spool) upload(ctx context.Context, key string) (blob.Info, error) {
	unlock := s.lock(key)
	defer unlock()
	return s.uploadLocked(ctx, key)
}

func (s *spool) uploadLocked(ctx context.Context, key string) (blob.Info, error) {
	path, fence, err := s.find(key)
	if err != nil {
		return blob.Info{}, err
	}
	f, err := os.Open(path)
	if err != nil {
		return blob.Info{}, fmt.Errorf("state: spool: %w", err)
	}
	info, err := s.blobs.Put(ctx, key, fence, f)
	f.Close()
	if err == nil || errors.Is(err, blob.ErrFenced) {
		os.Remove(path)
		return info, err
	}
	return info, fmt.Errorf("%w: %w", errUpload, err)
}

// flush uploads key's pending save, if any.
func (s *spool) flush(ctx context.Context, key string) error {
	_, err := s.upload(ctx, key)
	if errors.Is(err, errNothingSpooled) {
		return nil
	}
	if errors.Is(err, blob.ErrFenced) {
		return nil // refused for good: nothing left to make durable
	}
	return err
}

// open returns key's pending save for reading.
func (s *spool) open(key string) (io.ReadCloser, error) {
	path, _, err := s.find(key)
	if err != nil {
		return nil, err
	}
	return os.Open(path)
}

// pending lists the keys with a pending save.
func (s *spool) pending() ([]string, error) {
	matches, err := filepath.Glob(filepath.Join(s.dir, "*.pending"))
	if err != nil {
		return nil, err
	}
	keys := make([]string, 0, len(matches))
	for _, m := range matches {
		base := filepath.Base(m)
		h := base[:strings.LastIndexByte(base, '-')]
		k, err := hex.DecodeString(h)
		if err == nil {
			keys = append(keys, string(k))
		}
	}
	return keys, nil
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}
