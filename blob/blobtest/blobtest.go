// Package blobtest is the conformance suite every blob.Store adapter passes,
// against a real server. An adapter's test calls Run with a function that
// opens its store; the suite uses fresh, random keys in every test, so many
// runs may share one directory, bucket or database.
package blobtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berthhq/berth/blob"
)

// Open returns a store configured with opts, closed when t ends (use
// t.Cleanup). Every store opened within one Run must share one namespace
// (directory, bucket prefix, database schema) that no other Run uses: the
// suite opens two to stand for two Berth processes, and uses some fixed keys.
type Open func(t *testing.T, opts blob.Options) blob.Store

// Suite is the conformance suite with its knobs.
type Suite struct {
	Open Open
	// LargeSize is the size in bytes of the large-state test. Zero means
	// $BERTH_TEST_BLOB_LARGE_MB MiB, or 64 MiB (8 MiB with -short).
	LargeSize int64
}

// Run runs the suite with default knobs.
func Run(t *testing.T, open Open) { Suite{Open: open}.Run(t) }

// Run runs every conformance test as a subtest of t.
func (s Suite) Run(t *testing.T) {
	tests := []struct {
		name string
		fn   func(t *testing.T)
	}{
		{"NotFound", s.testNotFound},
		{"InvalidKey", s.testInvalidKey},
		{"RoundTrip", s.testRoundTrip},
		{"Empty", s.testEmpty},
		{"History", s.testHistory},
		{"Restore", s.testRestore},
		{"Fence", s.testFence},
		{"FenceBeforeFirstPut", s.testFenceBeforeFirstPut},
		{"StaleWriterInFlight", s.testStaleWriterInFlight},
		{"ConcurrentHolders", s.testConcurrentHolders},
		{"TwoStores", s.testTwoStores},
		{"AtomicReads", s.testAtomicReads},
		{"ReaderOutlivesTrim", s.testReaderOutlivesTrim},
		{"Keys", s.testKeys},
		{"ReaderError", s.testReaderError},
		{"ContextCanceled", s.testContextCanceled},
		{"Delete", s.testDelete},
		{"Large", s.testLarge},
	}
	for _, tc := range tests {
		t.Run(tc.name, tc.fn)
	}
}

// Key returns a random key ending in name, so tests do not meet each other.
func Key(name string) string {
	return fmt.Sprintf("bt-%08x/%s", rand.Uint32(), name)
}

func (s Suite) open(t *testing.T, history int) blob.Store {
	t.Helper()
	return s.Open(t, blob.Options{History: history})
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func put(t *testing.T, st blob.Store, key string, fence int64, body []byte) blob.Info {
	t.Helper()
	info, err := st.Put(ctx(t), key, fence, bytes.NewReader(body))
	if err != nil {
		t.Fatalf("Put(%q, fence %d): %v", key, fence, err)
	}
	if info.Key != key || info.Size != int64(len(body)) || info.SHA256 != sum(body) || info.Fence != fence || info.Version == "" {
		t.Fatalf("Put(%q, fence %d) info = %+v; want key, size %d, sha256 %s, fence %d, a version", key, fence, info, len(body), sum(body), fence)
	}
	if !blob.ValidVersion(info.Version) {
		t.Fatalf("Put(%q) version %q is not a valid version id", key, info.Version)
	}
	if d := time.Since(info.SavedAt); d < -time.Minute || d > time.Minute {
		t.Fatalf("Put(%q) SavedAt = %v, not now", key, info.SavedAt)
	}
	return info
}

func get(t *testing.T, st blob.Store, key string) ([]byte, blob.Info) {
	t.Helper()
	rc, info, err := st.Get(ctx(t), key)
	if err != nil {
		t.Fatalf("Get(%q): %v", key, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("Get(%q): read: %v", key, err)
	}
	if int64(len(b)) != info.Size || sum(b) != info.SHA256 {
		t.Fatalf("Get(%q): body of %d bytes, sha256 %s; Info says %d bytes, %s", key, len(b), sum(b), info.Size, info.SHA256)
	}
	return b, info
}

func getVersion(t *testing.T, st blob.Store, key, version string) ([]byte, blob.Info) {
	t.Helper()
	rc, info, err := st.GetVersion(ctx(t), key, version)
	if err != nil {
		t.Fatalf("GetVersion(%q, %q): %v", key, version, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("GetVersion(%q, %q): read: %v", key, version, err)
	}
	if info.Version != version || sum(b) != info.SHA256 {
		t.Fatalf("GetVersion(%q, %q): info %+v does not match body (sha256 %s)", key, version, info, sum(b))
	}
	return b, info
}

func versions(t *testing.T, st blob.Store, key string) []blob.Info {
	t.Helper()
	vs, err := st.Versions(ctx(t), key)
	if err != nil {
		t.Fatalf("Versions(%q): %v", key, err)
	}
	return vs
}

func sameInfo(a, b blob.Info) bool {
	return a.Key == b.Key && a.Version == b.Version && a.Size == b.Size && a.Fence == b.Fence &&
		a.SHA256 == b.SHA256 && a.SavedAt.Equal(b.SavedAt)
}

func wantErr(t *testing.T, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: err = %v; want %v", what, err, target)
	}
}

func wantBody(t *testing.T, st blob.Store, key string, want []byte) blob.Info {
	t.Helper()
	got, info := get(t, st, key)
	if !bytes.Equal(got, want) {
		t.Fatalf("Get(%q) = %q; want %q", key, clip(got), clip(want))
	}
	return info
}

func clip(b []byte) string {
	if len(b) > 40 {
		return string(b[:40]) + fmt.Sprintf("…(%d bytes)", len(b))
	}
	return string(b)
}

func (s Suite) testNotFound(t *testing.T) {
	st := s.open(t, 0)
	key := Key("missing")
	_, _, err := st.Get(ctx(t), key)
	wantErr(t, "Get of a missing key", err, blob.ErrNotFound)
	for _, v := range []string{"nope", "20260101T000000.000000Z-0011223344556677", "../../../etc/passwd", "", "a/b"} {
		_, _, err = st.GetVersion(ctx(t), key, v)
		wantErr(t, fmt.Sprintf("GetVersion(%q) of a missing key", v), err, blob.ErrNotFound)
	}
	if vs := versions(t, st, key); len(vs) != 0 {
		t.Fatalf("Versions of a missing key = %v; want none", vs)
	}
	if err := st.Delete(ctx(t), key); err != nil {
		t.Fatalf("Delete of a missing key: %v", err)
	}
	_, err = st.Restore(ctx(t), key, "nope", 1)
	wantErr(t, "Restore of a missing key", err, blob.ErrNotFound)

	put(t, st, key, 1, []byte("x"))
	_, _, err = st.GetVersion(ctx(t), key, "nope")
	wantErr(t, "GetVersion of a missing version", err, blob.ErrNotFound)
	_, err = st.Restore(ctx(t), key, "nope", 1)
	wantErr(t, "Restore of a missing version", err, blob.ErrNotFound)
}

func (s Suite) testInvalidKey(t *testing.T) {
	st := s.open(t, 0)
	for _, key := range []string{"", "a b", "x\x00y", "ü", "a\\b", "a%2e", strings.Repeat("k", 129)} {
		_, err := st.Put(ctx(t), key, 1, strings.NewReader("x"))
		wantErr(t, fmt.Sprintf("Put(%q)", key), err, blob.ErrInvalidKey)
		_, _, err = st.Get(ctx(t), key)
		wantErr(t, fmt.Sprintf("Get(%q)", key), err, blob.ErrInvalidKey)
		wantErr(t, fmt.Sprintf("Fence(%q)", key), st.Fence(ctx(t), key, 1), blob.ErrInvalidKey)
		_, err = st.Versions(ctx(t), key)
		wantErr(t, fmt.Sprintf("Versions(%q)", key), err, blob.ErrInvalidKey)
		wantErr(t, fmt.Sprintf("Delete(%q)", key), st.Delete(ctx(t), key), blob.ErrInvalidKey)
	}
}

func (s Suite) testRoundTrip(t *testing.T) {
	st := s.open(t, 0)
	key := Key("doc-42")
	body := []byte("hello, state")
	info := put(t, st, key, 3, body)
	got := wantBody(t, st, key, body)
	if !sameInfo(got, info) {
		t.Fatalf("Get info = %+v; Put said %+v", got, info)
	}
	vs := versions(t, st, key)
	if len(vs) != 1 || !sameInfo(vs[0], info) {
		t.Fatalf("Versions = %+v; want [%+v]", vs, info)
	}
	b, vi := getVersion(t, st, key, info.Version)
	if !bytes.Equal(b, body) || !sameInfo(vi, info) {
		t.Fatalf("GetVersion = %q %+v; want %q %+v", b, vi, body, info)
	}
	// Same fence again: the same holder saving again.
	body2 := []byte("second save")
	info2 := put(t, st, key, 3, body2)
	if info2.Version == info.Version {
		t.Fatalf("two saves got the same version %q", info.Version)
	}
	wantBody(t, st, key, body2)
}

func (s Suite) testEmpty(t *testing.T) {
	st := s.open(t, 0)
	key := Key("empty")
	put(t, st, key, 1, nil)
	if b, _ := get(t, st, key); len(b) != 0 {
		t.Fatalf("Get of an empty save = %q", b)
	}
}

func body(i int) []byte { return []byte(fmt.Sprintf("save number %d", i)) }

func (s Suite) testHistory(t *testing.T) {
	const keep = 3
	st := s.open(t, keep)
	key := Key("history")
	var infos []blob.Info
	for i := range 7 {
		infos = append(infos, put(t, st, key, 1, body(i)))
	}
	vs := versions(t, st, key)
	if len(vs) != keep {
		t.Fatalf("Versions: %d saves kept; want %d (History)", len(vs), keep)
	}
	for i, v := range vs {
		want := infos[len(infos)-1-i]
		if !sameInfo(v, want) {
			t.Fatalf("Versions[%d] = %+v; want %+v (newest first)", i, v, want)
		}
		b, _ := getVersion(t, st, key, v.Version)
		if !bytes.Equal(b, body(len(infos)-1-i)) {
			t.Fatalf("GetVersion(Versions[%d]) = %q; want %q", i, b, body(len(infos)-1-i))
		}
	}
	for _, old := range infos[:len(infos)-keep] {
		_, _, err := st.GetVersion(ctx(t), key, old.Version)
		wantErr(t, "GetVersion of a trimmed save", err, blob.ErrNotFound)
	}
	wantBody(t, st, key, body(6))

	// The default keeps blob.DefaultHistory.
	def := s.open(t, 0)
	key = Key("history-default")
	for i := range blob.DefaultHistory + 2 {
		put(t, def, key, 1, body(i))
	}
	if n := len(versions(t, def, key)); n != blob.DefaultHistory {
		t.Fatalf("default history kept %d saves; want %d", n, blob.DefaultHistory)
	}
}

func (s Suite) testRestore(t *testing.T) {
	st := s.open(t, 3)
	key := Key("restore")
	first := put(t, st, key, 1, body(0))
	put(t, st, key, 1, body(1))
	put(t, st, key, 2, body(2))

	r, err := st.Restore(ctx(t), key, first.Version, 2)
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if r.Version == first.Version || r.SHA256 != first.SHA256 || r.Size != first.Size || r.Fence != 2 || r.Key != key {
		t.Fatalf("Restore info = %+v; want a new version with the content of %+v and fence 2", r, first)
	}
	wantBody(t, st, key, body(0))
	vs := versions(t, st, key)
	if len(vs) != 3 || !sameInfo(vs[0], r) {
		t.Fatalf("Versions after Restore = %+v; want 3 with the restore first", vs)
	}
	// The restore was trimmed from the head like any save: the oldest
	// (the one restored from) is gone now.
	_, _, err = st.GetVersion(ctx(t), key, first.Version)
	wantErr(t, "GetVersion of the save trimmed by Restore", err, blob.ErrNotFound)

	// A stale holder cannot restore.
	_, err = st.Restore(ctx(t), key, vs[1].Version, 1)
	wantErr(t, "Restore with a stale fence", err, blob.ErrFenced)
	if now := versions(t, st, key); len(now) != 3 || !sameInfo(now[0], r) {
		t.Fatalf("a refused Restore changed the history: %+v", now)
	}
	wantBody(t, st, key, body(0))
}

func (s Suite) testFence(t *testing.T) {
	st := s.open(t, 0)
	key := Key("fence")
	put(t, st, key, 1, body(1))
	if err := st.Fence(ctx(t), key, 5); err != nil {
		t.Fatalf("Fence(5): %v", err)
	}
	before := versions(t, st, key)

	_, err := st.Put(ctx(t), key, 4, bytes.NewReader(body(4)))
	wantErr(t, "Put below the fence", err, blob.ErrFenced)
	var fe *blob.FencedError
	if !errors.As(err, &fe) || fe.Fence != 4 || fe.Current != 5 {
		t.Fatalf("Put below the fence: err = %#v; want *blob.FencedError{Fence: 4, Current: 5}", err)
	}
	wantBody(t, st, key, body(1))
	if after := versions(t, st, key); len(after) != len(before) {
		t.Fatalf("a refused Put changed the history: %d saves, then %d", len(before), len(after))
	}

	wantErr(t, "Fence lowered", st.Fence(ctx(t), key, 3), blob.ErrFenced)
	if err := st.Fence(ctx(t), key, 5); err != nil {
		t.Fatalf("Fence at its current value: %v", err)
	}
	put(t, st, key, 5, body(5))
	put(t, st, key, 7, body(7)) // a higher token raises the fence itself
	_, err = st.Put(ctx(t), key, 6, bytes.NewReader(body(6)))
	wantErr(t, "Put below a fence raised by a Put", err, blob.ErrFenced)
	wantErr(t, "Fence below a fence raised by a Put", st.Fence(ctx(t), key, 6), blob.ErrFenced)
	wantBody(t, st, key, body(7))
}

func (s Suite) testFenceBeforeFirstPut(t *testing.T) {
	st := s.open(t, 0)
	key := Key("fresh")
	// Fence 0 is where every key starts; callers probe a key's fence with
	// it, learning the fence from the *FencedError.
	if err := st.Fence(ctx(t), key, 0); err != nil {
		t.Fatalf("Fence(0) of a new key: %v", err)
	}
	if err := st.Fence(ctx(t), key, 5); err != nil {
		t.Fatalf("Fence of a key with no saves: %v", err)
	}
	_, _, err := st.Get(ctx(t), key)
	wantErr(t, "Get of a key with a fence and no saves", err, blob.ErrNotFound)
	_, err = st.Put(ctx(t), key, 4, bytes.NewReader(body(4)))
	wantErr(t, "first Put below the fence", err, blob.ErrFenced)
	_, _, err = st.Get(ctx(t), key)
	wantErr(t, "Get after a refused first Put", err, blob.ErrNotFound)
	if vs := versions(t, st, key); len(vs) != 0 {
		t.Fatalf("a refused first Put left saves: %+v", vs)
	}
	put(t, st, key, 5, body(5))
	wantBody(t, st, key, body(5))
	var fe *blob.FencedError
	if err := st.Fence(ctx(t), key, 0); !errors.As(err, &fe) || fe.Current != 5 {
		t.Fatalf("Fence(0) of a key fenced at 5: err = %v; want a *FencedError with Current 5", err)
	}
}

// gateReader yields head, then blocks until release is closed, then yields
// tail. started is closed once head has been read.
type gateReader struct {
	head, tail []byte
	started    chan struct{}
	release    chan struct{}
	once       sync.Once
}

func newGateReader(b []byte) *gateReader {
	return &gateReader{head: b[:len(b)/2], tail: b[len(b)/2:], started: make(chan struct{}), release: make(chan struct{})}
}

func (g *gateReader) Read(p []byte) (int, error) {
	if len(g.head) > 0 {
		n := copy(p, g.head)
		g.head = g.head[n:]
		return n, nil
	}
	g.once.Do(func() { close(g.started) })
	<-g.release
	if len(g.tail) == 0 {
		return 0, io.EOF
	}
	n := copy(p, g.tail)
	g.tail = g.tail[n:]
	return n, nil
}

// testStaleWriterInFlight is the case fencing exists for: a holder starts a
// save, loses the key while the body is still streaming (a new holder
// fences it and saves), and then finishes. Its save must be refused.
func (s Suite) testStaleWriterInFlight(t *testing.T) {
	st := s.open(t, 0)
	for _, newSaves := range []bool{true, false} {
		t.Run(fmt.Sprintf("newHolderSaves=%v", newSaves), func(t *testing.T) {
			key := Key("inflight")
			put(t, st, key, 1, []byte("initial"))
			stale := bytes.Repeat([]byte("stale "), 200_000)
			g := newGateReader(stale)
			done := make(chan error, 1)
			go func() {
				_, err := st.Put(ctx(t), key, 1, g)
				done <- err
			}()
			select {
			case <-g.started:
			case err := <-done:
				t.Fatalf("stale Put ended before its body was read: %v", err)
			}
			if err := st.Fence(ctx(t), key, 2); err != nil {
				t.Fatalf("Fence(2): %v", err)
			}
			want := []byte("initial")
			if newSaves {
				want = []byte("new holder")
				put(t, st, key, 2, want)
			}
			close(g.release)
			wantErr(t, "stale Put that finished after a new fence", <-done, blob.ErrFenced)
			wantBody(t, st, key, want)
			for _, v := range versions(t, st, key) {
				if v.Fence < 1 || v.SHA256 == sum(stale) {
					t.Fatalf("the stale save is in the history: %+v", v)
				}
			}
		})
	}
}

// testConcurrentHolders races holders 1..n, each fencing the key then saving,
// in random order. Whatever the interleaving, the last word belongs to the
// highest holder, and nobody below it can write afterwards.
func (s Suite) testConcurrentHolders(t *testing.T) {
	st := s.open(t, 0)
	key := Key("race")
	const n = 12
	var wg sync.WaitGroup
	var refused atomic.Int32
	errs := make(chan error, n)
	for f := int64(1); f <= n; f++ {
		wg.Go(func() {
			time.Sleep(time.Duration(rand.IntN(5)) * time.Millisecond)
			if err := st.Fence(ctx(t), key, f); err != nil {
				if errors.Is(err, blob.ErrFenced) {
					refused.Add(1)
					return
				}
				errs <- fmt.Errorf("Fence(%d): %w", f, err)
				return
			}
			_, err := st.Put(ctx(t), key, f, bytes.NewReader(body(int(f))))
			if errors.Is(err, blob.ErrFenced) {
				refused.Add(1)
			} else if err != nil {
				errs <- fmt.Errorf("Put(%d): %w", f, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	info := wantBody(t, st, key, body(n))
	if info.Fence != n {
		t.Fatalf("current save has fence %d; want %d", info.Fence, n)
	}
	_, err := st.Put(ctx(t), key, n-1, bytes.NewReader([]byte("late")))
	wantErr(t, "Put by an earlier holder after the race", err, blob.ErrFenced)
	t.Logf("%d of %d holders were fenced out", refused.Load(), n)
}

// testTwoStores checks fencing holds between two stores sharing storage, as
// two Berth processes (or machines) would.
func (s Suite) testTwoStores(t *testing.T) {
	a, b := s.open(t, 0), s.open(t, 0)
	key := Key("two")
	put(t, a, key, 1, []byte("from a"))
	if err := b.Fence(ctx(t), key, 2); err != nil {
		t.Fatalf("Fence(2) through the second store: %v", err)
	}
	_, err := a.Put(ctx(t), key, 1, strings.NewReader("stale from a"))
	wantErr(t, "Put through the first store after the second fenced", err, blob.ErrFenced)
	put(t, b, key, 2, []byte("from b"))
	wantBody(t, a, key, []byte("from b"))
}

// testAtomicReads reads while saves commit: every read must be one whole
// save, never a mix or a prefix.
func (s Suite) testAtomicReads(t *testing.T) {
	st := s.open(t, 3)
	key := Key("atomic")
	rng := rand.New(rand.NewChaCha8([32]byte{1}))
	bodies := make([][]byte, 3)
	known := map[string]bool{}
	for i := range bodies {
		bodies[i] = make([]byte, 512<<10+i*1000)
		randRead(rng, bodies[i])
		known[sum(bodies[i])] = true
	}
	put(t, st, key, 1, bodies[0])

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var reads atomic.Int64
	errs := make(chan error, 16)
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				rc, info, err := st.Get(ctx(t), key)
				if err != nil {
					errs <- fmt.Errorf("Get during saves: %w", err)
					return
				}
				b, err := io.ReadAll(rc)
				rc.Close()
				if err != nil {
					errs <- fmt.Errorf("reading during saves: %w", err)
					return
				}
				if got := sum(b); !known[got] || got != info.SHA256 || int64(len(b)) != info.Size {
					errs <- fmt.Errorf("read %d bytes with sha256 %s (Info %+v): not one whole save", len(b), got, info)
					return
				}
				reads.Add(1)
			}
		})
	}
	for i := range 15 {
		if _, err := st.Put(ctx(t), key, 1, bytes.NewReader(bodies[i%3])); err != nil {
			t.Errorf("Put %d: %v", i, err)
			break
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d whole reads during 15 saves", reads.Load())
}

// testReaderOutlivesTrim opens a save, lets newer saves trim it from the
// history while it is half read, and checks the reader still yields it whole.
func (s Suite) testReaderOutlivesTrim(t *testing.T) {
	st := s.open(t, 2)
	key := Key("outlive")
	old := bytes.Repeat([]byte("0123456789abcdef"), 3<<20/16) // several chunks or parts
	put(t, st, key, 1, old)
	rc, info, err := st.Get(ctx(t), key)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	head := make([]byte, 1000)
	if _, err := io.ReadFull(rc, head); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		put(t, st, key, 1, body(i))
	}
	_, _, err = st.GetVersion(ctx(t), key, info.Version)
	wantErr(t, "GetVersion of the trimmed save", err, blob.ErrNotFound)
	rest, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("reading a save trimmed while open: %v", err)
	}
	if got := append(head, rest...); !bytes.Equal(got, old) {
		t.Fatalf("a save trimmed while open read back as %d bytes, not the %d saved", len(got), len(old))
	}
}

// TrickyKeys are valid keys that would misbehave if used as paths or object
// names without encoding.
var TrickyKeys = []string{
	"a", "A", "a/b", "a/b/c", "a//b", "/lead", "trail/", "/", "//", ".", "..", "...", "./a", "../x",
	"../../../../../../etc/passwd", "/etc/passwd", "a/../../b", "a/./b", "a/..", ".hidden",
	"manifest.json", "a/manifest.json", "a/v", "a/v/x", "lock", ".tmp-x", "v",
	"user@example.com:doc", "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:/@-",
	strings.Repeat("x", 128), strings.Repeat("/", 128), strings.Repeat(".", 128),
}

func (s Suite) testKeys(t *testing.T) {
	st := s.open(t, 0)
	for _, k := range TrickyKeys {
		if err := blob.ValidateKey(k); err != nil {
			t.Fatalf("test key %q: %v", k, err)
		}
		put(t, st, k, 1, []byte("state of "+k))
	}
	for _, k := range TrickyKeys {
		got, info := get(t, st, k)
		if string(got) != "state of "+k || info.Key != k {
			t.Fatalf("Get(%q) = %q (key %q); want %q", k, got, info.Key, "state of "+k)
		}
		if n := len(versions(t, st, k)); n != 1 {
			t.Fatalf("Versions(%q): %d saves; want 1", k, n)
		}
	}
	for _, k := range TrickyKeys {
		if err := st.Delete(ctx(t), k); err != nil {
			t.Fatalf("Delete(%q): %v", k, err)
		}
	}
	for _, k := range TrickyKeys {
		if _, _, err := st.Get(ctx(t), k); !errors.Is(err, blob.ErrNotFound) {
			t.Fatalf("Get(%q) after Delete: %v; want ErrNotFound", k, err)
		}
	}
}

type failingReader struct {
	n   int
	err error
}

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, f.err
	}
	if len(p) > f.n {
		p = p[:f.n]
	}
	for i := range p {
		p[i] = 'z'
	}
	f.n -= len(p)
	return len(p), nil
}

func (s Suite) testReaderError(t *testing.T) {
	st := s.open(t, 0)
	key := Key("reader-error")
	orig := put(t, st, key, 1, []byte("intact"))
	boom := errors.New("boom: the backend's upload broke")
	for _, n := range []int{0, 100, 3 << 20} {
		_, err := st.Put(ctx(t), key, 1, &failingReader{n: n, err: boom})
		if err == nil {
			t.Fatalf("Put with a reader failing after %d bytes succeeded", n)
		}
		info := wantBody(t, st, key, []byte("intact"))
		if !sameInfo(info, orig) {
			t.Fatalf("a failed Put changed the current save: %+v; was %+v", info, orig)
		}
		if vs := versions(t, st, key); len(vs) != 1 {
			t.Fatalf("a failed Put changed the history: %+v", vs)
		}
	}
}

// cancelReader cancels its context after n bytes, then keeps yielding.
type cancelReader struct {
	n      int
	cancel context.CancelFunc
}

func (c *cancelReader) Read(p []byte) (int, error) {
	if c.n <= 0 {
		c.cancel()
	}
	if len(p) > 64<<10 {
		p = p[:64<<10]
	}
	for i := range p {
		p[i] = 'c'
	}
	c.n -= len(p)
	return len(p), nil
}

func (s Suite) testContextCanceled(t *testing.T) {
	st := s.open(t, 0)
	key := Key("canceled")
	put(t, st, key, 1, []byte("intact"))
	c, cancel := context.WithCancel(ctx(t))
	defer cancel()
	// The reader never ends on its own: only the canceled context can end
	// this Put.
	_, err := st.Put(c, key, 1, &cancelReader{n: 1 << 20, cancel: cancel})
	if err == nil {
		t.Fatal("Put whose context was canceled mid-body succeeded")
	}
	wantBody(t, st, key, []byte("intact"))
	if vs := versions(t, st, key); len(vs) != 1 {
		t.Fatalf("a canceled Put changed the history: %+v", vs)
	}
}

func (s Suite) testDelete(t *testing.T) {
	st := s.open(t, 0)
	key := Key("delete")
	a := put(t, st, key, 3, body(1))
	put(t, st, key, 3, body(2))
	if err := st.Delete(ctx(t), key); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	_, _, err := st.Get(ctx(t), key)
	wantErr(t, "Get after Delete", err, blob.ErrNotFound)
	_, _, err = st.GetVersion(ctx(t), key, a.Version)
	wantErr(t, "GetVersion after Delete", err, blob.ErrNotFound)
	if vs := versions(t, st, key); len(vs) != 0 {
		t.Fatalf("Versions after Delete = %+v", vs)
	}
	if err := st.Delete(ctx(t), key); err != nil {
		t.Fatalf("second Delete: %v", err)
	}
	_, err = st.Put(ctx(t), key, 2, bytes.NewReader(body(9)))
	wantErr(t, "Put below the fence after Delete (the fence must survive)", err, blob.ErrFenced)
	put(t, st, key, 3, body(3))
	wantBody(t, st, key, body(3))
}

// genReader yields n pseudo-random bytes without holding them.
type genReader struct {
	rng *rand.ChaCha8
	n   int64
}

func (g *genReader) Read(p []byte) (int, error) {
	if g.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > g.n {
		p = p[:g.n]
	}
	g.rng.Read(p)
	g.n -= int64(len(p))
	return len(p), nil
}

func randRead(rng *rand.Rand, p []byte) {
	for i := range p {
		p[i] = byte(rng.Uint32())
	}
}

func (s Suite) largeSize() int64 {
	if s.LargeSize > 0 {
		return s.LargeSize
	}
	if v := os.Getenv("BERTH_TEST_BLOB_LARGE_MB"); v != "" {
		if mb, err := strconv.Atoi(v); err == nil && mb > 0 {
			return int64(mb) << 20
		}
	}
	if testing.Short() {
		return 8 << 20
	}
	return 64 << 20
}

// heapPeak samples the heap in use until stop is called and returns the
// peak above the level when it started.
func heapPeak() (stop func() uint64) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	var peak atomic.Uint64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > base && ms.HeapInuse-base > peak.Load() {
				peak.Store(ms.HeapInuse - base)
			}
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	})
	return func() uint64 {
		close(done)
		wg.Wait()
		return peak.Load()
	}
}

// testLarge streams a large state in and out and checks that neither
// direction held the whole body in memory.
func (s Suite) testLarge(t *testing.T) {
	st := s.open(t, 2)
	key := Key("large")
	size := s.largeSize()
	seed := [32]byte{42}
	want := sha256.New()
	io.Copy(want, &genReader{rng: rand.NewChaCha8(seed), n: size})
	wantSum := hex.EncodeToString(want.Sum(nil))

	stop := heapPeak()
	start := time.Now()
	info, err := st.Put(ctx(t), key, 1, &genReader{rng: rand.NewChaCha8(seed), n: size})
	putTime := time.Since(start)
	putPeak := stop()
	if err != nil {
		t.Fatalf("Put of %d MiB: %v", size>>20, err)
	}
	if info.Size != size || info.SHA256 != wantSum {
		t.Fatalf("Put of %d bytes: info %+v; want sha256 %s", size, info, wantSum)
	}

	stop = heapPeak()
	start = time.Now()
	rc, ginfo, err := st.Get(ctx(t), key)
	if err != nil {
		stop()
		t.Fatalf("Get: %v", err)
	}
	h := sha256.New()
	n, err := io.Copy(h, rc)
	rc.Close()
	getTime := time.Since(start)
	getPeak := stop()
	if err != nil {
		t.Fatalf("Get: read: %v", err)
	}
	if n != size || hex.EncodeToString(h.Sum(nil)) != wantSum || !sameInfo(ginfo, info) {
		t.Fatalf("Get: %d bytes, sha256 %x, info %+v; want %d bytes, %s", n, h.Sum(nil), ginfo, size, wantSum)
	}
	t.Logf("%d MiB: put %v (heap peak +%d MiB), get %v (heap peak +%d MiB)",
		size>>20, putTime.Round(time.Millisecond), putPeak>>20, getTime.Round(time.Millisecond), getPeak>>20)
	// Only meaningful when the body dwarfs an adapter's bounded buffers
	// (a few MiB) and the garbage they leave between collections.
	if size >= 32<<20 {
		limit := uint64(size) * 3 / 4
		if putPeak > limit {
			t.Errorf("Put of %d MiB raised the heap by %d MiB: the body seems held in memory", size>>20, putPeak>>20)
		}
		if getPeak > limit {
			t.Errorf("Get of %d MiB raised the heap by %d MiB: the body seems held in memory", size>>20, getPeak>>20)
		}
	}
}
