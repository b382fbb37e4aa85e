// Package blob defines where backends' saved state lives: the Store contract,
// its errors and options. Adapters live in sub-packages, one per kind of
// storage — file (a local directory), s3 (any S3-compatible bucket) and
// postgres (an existing database) — and blobs chooses one by URL scheme.
// blobtest is the conformance suite every adapter passes.
//
// The contract every adapter must keep, because Berth's guarantees rest on it:
//
//   - Writes are fenced. Each key has a fence, a number that only grows. A
//     write carrying a lower fencing token than the key's fence is refused
//     with ErrFenced and changes nothing, and the check happens in the same
//     atomic step as the commit — never as a separate read before it.
//   - Commits are atomic. A reader sees the whole old state or the whole new
//     one, never a mix, never a half-written body.
//   - Bodies are streamed. A state may be tens of MiB; an adapter never holds
//     a whole body in memory.
//
// This package must never import an adapter.
package blob

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/berthhq/berth"
)

// Store keeps the saved states of keys, with the last few saves of each
// (history). All methods are safe for concurrent use, also by several
// processes (and, for s3 and postgres, several machines) sharing one store.
//
// Keys are Berth keys (berth.ValidateKey: 1–128 characters of
// [A-Za-z0-9._:/@-]); a key may contain '/' and '..' and still names exactly
// one state: adapters encode keys, never use them as paths. A malformed key
// gives an error wrapping ErrInvalidKey.
type Store interface {
	// Get opens the current state of key. It returns ErrNotFound when key
	// has no saved state (never saved, or deleted). The caller closes the
	// reader; the body it yields is exactly the committed state described
	// by Info, even if newer saves commit while it is being read.
	Get(ctx context.Context, key string) (io.ReadCloser, Info, error)

	// GetVersion opens one save from key's history. It returns ErrNotFound
	// when key has no such version (never existed, trimmed, or deleted).
	GetVersion(ctx context.Context, key, version string) (io.ReadCloser, Info, error)

	// Put reads r to its end and makes it key's current state, as a new
	// version at the head of the history, which is then trimmed to
	// Options.History saves. It returns ErrFenced (a *FencedError) and
	// changes nothing when fence is lower than the key's fence; a fence
	// higher than the key's raises the key's fence to it. When r fails or
	// ctx ends before the commit, Put returns that error and changes
	// nothing. r is streamed, never held whole in memory.
	Put(ctx context.Context, key string, fence int64, r io.Reader) (Info, error)

	// Fence raises key's fence to fence, so that from now on every write
	// with a lower token is refused. Raising it to its current value is a
	// no-op. When key's fence is already higher than fence, Fence changes
	// nothing and returns ErrFenced (a *FencedError). A key need not have a
	// saved state to carry a fence.
	Fence(ctx context.Context, key string, fence int64) error

	// Versions lists key's saves, newest first; the first is the current
	// state. A key with no saves gives an empty list and no error.
	Versions(ctx context.Context, key string) ([]Info, error)

	// Restore makes an earlier save of key current again, as a new save
	// (with a new version id) at the head of the history, written with
	// fence exactly as Put would. It returns ErrNotFound when there is no
	// such version and ErrFenced when fence is lower than the key's fence.
	Restore(ctx context.Context, key, version string, fence int64) (Info, error)

	// Delete removes every save of key. The key's fence is kept, so a stale
	// holder still cannot write afterwards. Deleting a key with no saves is
	// not an error.
	Delete(ctx context.Context, key string) error

	// Close releases the store's resources (connections, pools).
	Close() error
}

// Info describes one save of a key.
type Info struct {
	Key string `json:"key"`
	// Version identifies this save among the key's history. It is opaque,
	// unique per key, and safe in URLs and file names.
	Version string `json:"version"`
	Size    int64  `json:"size"`
	// Fence is the fencing token the save was written with.
	Fence   int64     `json:"fence"`
	SavedAt time.Time `json:"saved_at"`
	// SHA256 is the hex SHA-256 of the body.
	SHA256 string `json:"sha256"`
}

// Errors every adapter translates its own into. Test with errors.Is.
var (
	// ErrNotFound: no such key or version. It matches berth.ErrNotFound too.
	ErrNotFound = fmt.Errorf("blob: %w", berth.ErrNotFound)
	// ErrFenced: the write carried a fencing token lower than the key's
	// fence, so a newer holder owns the key; nothing was changed.
	ErrFenced = errors.New("blob: fenced: a newer holder owns the key")
	// ErrInvalidKey: the key or version is malformed.
	ErrInvalidKey = errors.New("blob: invalid key")
)

// FencedError is the error a refused write returns. It says which fence was
// refused and, where the adapter knows it, the key's fence at that moment.
type FencedError struct {
	Key     string
	Fence   int64 // the token the write carried
	Current int64 // the key's fence that refused it
}

func (e *FencedError) Error() string {
	return fmt.Sprintf("blob: key %q: fencing token %d is older than the key's fence %d: a newer holder owns the key", e.Key, e.Fence, e.Current)
}

// Unwrap makes errors.Is(err, ErrFenced) hold.
func (e *FencedError) Unwrap() error { return ErrFenced }

// Fenced returns the error for a write with token fence refused by a key
// whose fence is current.
func Fenced(key string, fence, current int64) error {
	return &FencedError{Key: key, Fence: fence, Current: current}
}

// Options configure any adapter.
type Options struct {
	// History is how many saves to keep per key, the current one included.
	// Zero means DefaultHistory.
	History int
	// Logger receives what an adapter cannot return, such as a failure to
	// clean up trimmed versions. Nil discards.
	Logger *slog.Logger
}

// DefaultHistory is the number of saves kept per key when Options.History is 0.
const DefaultHistory = 10

// WithDefaults returns o with zero fields filled in.
func (o Options) WithDefaults() Options {
	if o.History <= 0 {
		o.History = DefaultHistory
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// ValidateKey returns an error wrapping ErrInvalidKey unless key is a valid
// Berth key.
func ValidateKey(key string) error {
	if err := berth.ValidateKey(key); err != nil {
		return fmt.Errorf("%w %q: %v", ErrInvalidKey, key, err)
	}
	return nil
}

// ValidVersion reports whether v could be a version id made by NewVersion:
// 1–64 characters of [A-Za-z0-9._-], not starting with '.'. Adapters answer
// ErrNotFound for anything else, so a version can never name a path.
func ValidVersion(v string) bool {
	if v == "" || len(v) > 64 || v[0] == '.' {
		return false
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// NewVersion returns a fresh version id: the UTC time, so ids read in
// order for a human, and 64 random bits, so ids are unique even across
// machines whose clocks disagree. The history's order comes from the store,
// never from comparing ids.
func NewVersion(now time.Time) string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return now.UTC().Format("20060102T150405.000000Z") + "-" + hex.EncodeToString(b[:])
}

// RestoreByCopy implements Store.Restore for an adapter that has no cheaper
// way: it streams the old version back through s.Put, so the restore is
// fenced and committed exactly like any other save.
func RestoreByCopy(ctx context.Context, s Store, key, version string, fence int64) (Info, error) {
	rc, _, err := s.GetVersion(ctx, key, version)
	if err != nil {
		return Info{}, err
	}
	defer rc.Close()
	return s.Put(ctx, key, fence, rc)
}

// ContextReader returns r, stopping with ctx's error once ctx ends: adapters
// copy callers' bodies through it so a cancelled save stops reading.
func ContextReader(ctx context.Context, r io.Reader) io.Reader { return ctxReader{ctx, r} }

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
