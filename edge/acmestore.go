package edge

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/blob"
)

// BlobStorage keeps certmagic's certificates, keys, ACME accounts and
// HTTP-01 challenge tokens in Berth's blob store, so every replica sharing
// the store serves the same certificate and answers challenges another
// replica started.
//
// certmagic names things by paths of any length and characters; blob keys
// are short and restricted, so each name is stored under
// @berth/acme/<sha256>.
// The blob contract has no listing, so the names live in an index blob too
// (acme-index), which List and Delete of a prefix read.
//
// The blob contract has no compare-and-swap either, so Lock is a lease
// written to a blob, renewed while held and read back after writing: two
// replicas racing for an expired lease can, rarely, both believe they hold
// it. certmagic only uses the lock to avoid obtaining one certificate
// twice; the worst case is a second, harmless, issuance.
type BlobStorage struct {
	blobs  blob.Store
	holder string

	idx sync.Mutex // serialises this process's index updates

	mu    sync.Mutex
	held  map[string]context.CancelFunc // renewals of the locks this process holds
	local map[string]chan struct{}      // closed when this process's holder of a name unlocks
	clock func() time.Time
}

var _ certmagic.Storage = (*BlobStorage)(nil)

const (
	lockTTL    = 30 * time.Second
	lockSettle = 300 * time.Millisecond // between writing a lease and reading it back
	// Berth's own blobs live under @berth/, beside the keys' states; the
	// control API refuses keys with that prefix (berth.Reserved).
	namePrefix = berth.ReservedKeyPrefix + "acme"
	lockPrefix = berth.ReservedKeyPrefix + "acme-lock"
	indexKey   = berth.ReservedKeyPrefix + "acme-index"
)

// NewBlobStorage returns certmagic storage backed by blobs.
func NewBlobStorage(blobs blob.Store) *BlobStorage {
	var b [8]byte
	rand.Read(b[:])
	return &BlobStorage{blobs: blobs, holder: hex.EncodeToString(b[:]), held: make(map[string]context.CancelFunc),
		local: make(map[string]chan struct{}), clock: time.Now}
}

func blobKey(prefix, name string) string {
	sum := sha256.Sum256([]byte(name))
	return prefix + "/" + hex.EncodeToString(sum[:])
}

// Store implements certmagic.Storage.
func (s *BlobStorage) Store(ctx context.Context, key string, value []byte) error {
	if _, err := s.blobs.Put(ctx, blobKey(namePrefix, key), 0, bytes.NewReader(value)); err != nil {
		return fmt.Errorf("acme storage: store %s: %w", key, err)
	}
	return s.updateIndex(ctx, func(names []string) []string {
		if i, found := slices.BinarySearch(names, key); !found {
			names = slices.Insert(names, i, key)
		}
		return names
	})
}

// Load implements certmagic.Storage: fs.ErrNotExist for a missing key.
func (s *BlobStorage) Load(ctx context.Context, key string) ([]byte, error) {
	rc, _, err := s.blobs.Get(ctx, blobKey(namePrefix, key))
	if errors.Is(err, blob.ErrNotFound) {
		return nil, fs.ErrNotExist
	}
	if err != nil {
		return nil, fmt.Errorf("acme storage: load %s: %w", key, err)
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

// Delete implements certmagic.Storage: key and every name under it.
func (s *BlobStorage) Delete(ctx context.Context, key string) error {
	names, err := s.index(ctx)
	if err != nil {
		return err
	}
	gone := []string{key}
	for _, n := range names {
		if strings.HasPrefix(n, strings.TrimSuffix(key, "/")+"/") {
			gone = append(gone, n)
		}
	}
	for _, n := range gone {
		if err := s.blobs.Delete(ctx, blobKey(namePrefix, n)); err != nil {
			return fmt.Errorf("acme storage: delete %s: %w", n, err)
		}
	}
	return s.updateIndex(ctx, func(names []string) []string {
		return slices.DeleteFunc(names, func(n string) bool { return slices.Contains(gone, n) })
	})
}

// Exists implements certmagic.Storage.
func (s *BlobStorage) Exists(ctx context.Context, key string) bool {
	if vs, err := s.blobs.Versions(ctx, blobKey(namePrefix, key)); err == nil && len(vs) > 0 {
		return true
	}
	names, err := s.index(ctx)
	if err != nil {
		return false
	}
	dir := strings.TrimSuffix(key, "/") + "/"
	for _, n := range names {
		if strings.HasPrefix(n, dir) {
			return true
		}
	}
	return false
}

// List implements certmagic.Storage.
func (s *BlobStorage) List(ctx context.Context, path string, recursive bool) ([]string, error) {
	names, err := s.index(ctx)
	if err != nil {
		return nil, err
	}
	dir := strings.TrimSuffix(path, "/") + "/"
	var out []string
	for _, n := range names {
		rest, ok := strings.CutPrefix(n, dir)
		if !ok {
			continue
		}
		if !recursive {
			first, _, _ := strings.Cut(rest, "/")
			n = dir + first
		}
		if len(out) == 0 || out[len(out)-1] != n {
			out = append(out, n)
		}
	}
	if len(out) == 0 {
		return nil, fs.ErrNotExist
	}
	return out, nil
}

// Stat implements certmagic.Storage.
func (s *BlobStorage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	vs, err := s.blobs.Versions(ctx, blobKey(namePrefix, key))
	if err != nil {
		return certmagic.KeyInfo{}, fmt.Errorf("acme storage: stat %s: %w", key, err)
	}
	if len(vs) == 0 {
		if s.Exists(ctx, key) {
			return certmagic.KeyInfo{Key: key, IsTerminal: false}, nil
		}
		return certmagic.KeyInfo{}, fs.ErrNotExist
	}
	return certmagic.KeyInfo{Key: key, Modified: vs[0].SavedAt, Size: vs[0].Size, IsTerminal: true}, nil
}

func (s *BlobStorage) index(ctx context.Context) ([]string, error) {
	rc, _, err := s.blobs.Get(ctx, indexKey)
	if errors.Is(err, blob.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("acme storage: index: %w", err)
	}
	defer rc.Close()
	var names []string
	if err := json.NewDecoder(rc).Decode(&names); err != nil {
		return nil, fmt.Errorf("acme storage: index: %w", err)
	}
	slices.Sort(names)
	return names, nil
}

// updateIndex rewrites the index with change. Another replica's update in
// between can drop a name from it, never a blob: List then misses it,
// which certmagic tolerates (it lists only to clean up and to find
// accounts, and Berth names the account's email).
func (s *BlobStorage) updateIndex(ctx context.Context, change func([]string) []string) error {
	s.idx.Lock()
	defer s.idx.Unlock()
	names, err := s.index(ctx)
	if err != nil {
		return err
	}
	before := slices.Clone(names)
	names = change(names)
	if slices.Equal(before, names) {
		return nil
	}
	b, _ := json.Marshal(names)
	if _, err := s.blobs.Put(ctx, indexKey, 0, bytes.NewReader(b)); err != nil {
		return fmt.Errorf("acme storage: index: %w", err)
	}
	return nil
}

type lease struct {
	Holder  string    `json:"holder"`
	Expires time.Time `json:"expires"`
}

func (s *BlobStorage) readLease(ctx context.Context, key string) (lease, error) {
	rc, _, err := s.blobs.Get(ctx, key)
	if errors.Is(err, blob.ErrNotFound) {
		return lease{}, nil
	}
	if err != nil {
		return lease{}, err
	}
	defer rc.Close()
	var l lease
	if err := json.NewDecoder(rc).Decode(&l); err != nil {
		return lease{}, nil // a torn or foreign lease is no lease
	}
	return l, nil
}

func (s *BlobStorage) writeLease(ctx context.Context, key string) error {
	b, _ := json.Marshal(lease{Holder: s.holder, Expires: s.clock().Add(lockTTL)})
	_, err := s.blobs.Put(ctx, key, 0, bytes.NewReader(b))
	return err
}

// Lock implements certmagic.Locker. Goroutines of this process queue for
// a name here; one at a time takes the lease other processes see.
func (s *BlobStorage) Lock(ctx context.Context, name string) error {
	for {
		s.mu.Lock()
		wait, busy := s.local[name]
		if !busy {
			s.local[name] = make(chan struct{})
			s.mu.Unlock()
			break
		}
		s.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err := s.lockLease(ctx, name); err != nil {
		s.releaseLocal(name)
		return err
	}
	return nil
}

func (s *BlobStorage) releaseLocal(name string) {
	s.mu.Lock()
	if ch, ok := s.local[name]; ok {
		close(ch)
		delete(s.local, name)
	}
	s.mu.Unlock()
}

func (s *BlobStorage) lockLease(ctx context.Context, name string) error {
	key := blobKey(lockPrefix, name)
	for {
		l, err := s.readLease(ctx, key)
		if err != nil {
			return fmt.Errorf("acme storage: lock %s: %w", name, err)
		}
		if l.Holder == "" || l.Holder == s.holder || s.clock().After(l.Expires) {
			if err := s.writeLease(ctx, key); err != nil {
				return fmt.Errorf("acme storage: lock %s: %w", name, err)
			}
			if err := sleep(ctx, lockSettle); err != nil {
				return err
			}
			if l, err = s.readLease(ctx, key); err == nil && l.Holder == s.holder {
				s.hold(name, key)
				return nil
			}
		}
		if err := sleep(ctx, time.Second); err != nil {
			return err
		}
	}
}

// hold renews the lease on key until Unlock.
func (s *BlobStorage) hold(name, key string) {
	ctx, cancel := context.WithCancel(context.Background())
	s.mu.Lock()
	if prev := s.held[name]; prev != nil {
		prev()
	}
	s.held[name] = cancel
	s.mu.Unlock()
	go func() {
		t := time.NewTicker(lockTTL / 3)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				s.writeLease(ctx, key)
			}
		}
	}()
}

// Unlock implements certmagic.Locker.
func (s *BlobStorage) Unlock(ctx context.Context, name string) error {
	s.mu.Lock()
	cancel := s.held[name]
	delete(s.held, name)
	s.mu.Unlock()
	if cancel == nil {
		return fmt.Errorf("acme storage: unlock %s: not locked here", name)
	}
	cancel()
	defer s.releaseLocal(name)
	key := blobKey(lockPrefix, name)
	if l, err := s.readLease(ctx, key); err == nil && l.Holder == s.holder {
		return s.blobs.Delete(ctx, key)
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
