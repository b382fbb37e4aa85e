package logs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berthhq/berth"
)

// history returns id's buffered output without following.
func history(t *testing.T, s *Store, id string) string {
	t.Helper()
	var b bytes.Buffer
	if err := s.Copy(context.Background(), id, false, &b); err != nil {
		t.Fatalf("Copy(%s): %v", id, err)
	}
	return b.String()
}

func TestStore_Writer_bounded(t *testing.T) {
	tests := []struct {
		name   string
		max    int
		writes []string
		want   string
	}{
		{"under the limit", 20, []string{"abc"}, "abc"},
		{"drops the first whole line", 20, []string{"aaa\n", "bbbbbbbbbbbbbbb\n", "cc\n"}, "bbbbbbbbbbbbbbb\ncc\n"},
		{"cut right after a newline", 20, []string{"aaaa\n", "bbbbbbbbbbbbbbbbbbb\n"}, "bbbbbbbbbbbbbbbbbbb\n"},
		{"one long line is cut mid-line", 20, []string{"0123456789abcdefghijKLM"}, "3456789abcdefghijKLM"},
		{"a write larger than the buffer", 20, []string{"x\n", "0123456789abcdefghijKLMNOP\n"}, "789abcdefghijKLMNOP\n"},
		{"newline too far to align", 20, []string{"ab\n", "cdefghijklmnopqrstuvwxyz\n"}, "hijklmnopqrstuvwxyz\n"},
		{"newline inside the new write", 20, []string{"abcd", "ef\nghijklmnopqrstuvw"}, "ghijklmnopqrstuvw"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := New(Config{MaxBytes: tt.max})
			w := s.Writer("bk_1")
			for _, p := range tt.writes {
				if n, err := w.Write([]byte(p)); n != len(p) || err != nil {
					t.Fatalf("Write(%q) = %d, %v; want %d, nil", p, n, err, len(p))
				}
			}
			if got := history(t, s, "bk_1"); got != tt.want {
				t.Errorf("history = %q, want %q", got, tt.want)
			}
		})
	}

	t.Run("many writes stay bounded and keep the newest line", func(t *testing.T) {
		const maxBytes = 1000
		s := New(Config{MaxBytes: maxBytes})
		w := s.Writer("bk_1")
		var last string
		for i := range 10000 {
			last = fmt.Sprintf("line %d %s\n", i, strings.Repeat("x", i%37))
			w.Write([]byte(last))
		}
		got := history(t, s, "bk_1")
		if len(got) > maxBytes {
			t.Errorf("kept %d bytes, want at most %d", len(got), maxBytes)
		}
		if !strings.HasPrefix(got, "line ") || !strings.HasSuffix(got, last) {
			t.Errorf("history does not run from a line start to the last line:\n%s", got)
		}
		if l := s.logs["bk_1"]; cap(l.data) > 2*maxBytes {
			t.Errorf("capacity %d, want at most %d", cap(l.data), 2*maxBytes)
		}
	})
}

func TestStore_Copy_notFound(t *testing.T) {
	s := New(Config{})
	err := s.Copy(context.Background(), "bk_none", false, &bytes.Buffer{})
	if !errors.Is(err, berth.ErrNotFound) {
		t.Fatalf("Copy of an unknown id: %v, want ErrNotFound", err)
	}
	s.Open("bk_1")
	if got := history(t, s, "bk_1"); got != "" {
		t.Errorf("opened log = %q, want empty", got)
	}
}

// syncBuffer is a bytes.Buffer that a test can poll while Copy writes to it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// follow runs Copy with follow in a goroutine and returns its result channel.
func follow(ctx context.Context, s *Store, id string, w *syncBuffer) <-chan error {
	errc := make(chan error, 1)
	go func() { errc <- s.Copy(ctx, id, true, w) }()
	return errc
}

func wait(t *testing.T, errc <-chan error) error {
	t.Helper()
	select {
	case err := <-errc:
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("Copy did not return")
		return nil
	}
}

func TestStore_Copy_follow(t *testing.T) {
	s := New(Config{})
	s.Open("bk_1")
	w := s.Writer("bk_1")
	w.Write([]byte("history\n"))

	var out syncBuffer
	errc := follow(context.Background(), s, "bk_1", &out)
	waitFor(t, "history", func() bool { return out.String() == "history\n" })

	w.Write([]byte("live\n"))
	waitFor(t, "live output", func() bool { return out.String() == "history\nlive\n" })

	s.Finish("bk_1")
	if err := wait(t, errc); err != nil {
		t.Fatalf("Copy after Finish: %v", err)
	}
	if got, want := out.String(), "history\nlive\n"; got != want {
		t.Errorf("followed %q, want %q", got, want)
	}

	// A finished log is still readable, and following it just drains it.
	var again syncBuffer
	if err := wait(t, follow(context.Background(), s, "bk_1", &again)); err != nil || again.String() != "history\nlive\n" {
		t.Errorf("following a finished log: %q, %v", again.String(), err)
	}
}

func TestStore_Copy_followBeforeOutput(t *testing.T) {
	s := New(Config{})
	s.Open("bk_1")
	var out syncBuffer
	errc := follow(context.Background(), s, "bk_1", &out)
	s.Writer("bk_1").Write([]byte("first\n"))
	waitFor(t, "first output", func() bool { return out.String() == "first\n" })
	s.Finish("bk_1")
	if err := wait(t, errc); err != nil {
		t.Fatal(err)
	}
}

func TestStore_Copy_ctxCancel(t *testing.T) {
	s := New(Config{})
	s.Writer("bk_1").Write([]byte("x\n"))
	ctx, cancel := context.WithCancel(context.Background())
	var out syncBuffer
	errc := follow(ctx, s, "bk_1", &out)
	waitFor(t, "history", func() bool { return out.String() == "x\n" })
	cancel()
	if err := wait(t, errc); !errors.Is(err, context.Canceled) {
		t.Fatalf("Copy after cancel: %v, want context.Canceled", err)
	}
}

func TestStore_Copy_flushes(t *testing.T) {
	s := New(Config{})
	s.Writer("bk_1").Write([]byte("x\n"))
	rec := httptest.NewRecorder()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- s.Copy(ctx, "bk_1", true, rec) }()
	// Copy writes and flushes the history before it looks at ctx, and the
	// recorder is not safe to read while Copy runs: cancel, then wait.
	cancel()
	wait(t, errc)
	if !rec.Flushed || rec.Body.String() != "x\n" {
		t.Errorf("Flushed = %v, body %q; want true, %q", rec.Flushed, rec.Body.String(), "x\n")
	}
}

// blockingWriter blocks every Write until released, like a stalled client.
type blockingWriter struct {
	syncBuffer
	entered chan struct{}
	release chan struct{}
	once    sync.Once
}

func (b *blockingWriter) Write(p []byte) (int, error) {
	b.once.Do(func() { close(b.entered) })
	<-b.release
	return b.syncBuffer.Write(p)
}

func TestStore_Copy_slowFollower(t *testing.T) {
	const maxBytes = 4 << 10
	s := New(Config{MaxBytes: maxBytes})
	w := s.Writer("bk_1")
	bw := &blockingWriter{entered: make(chan struct{}), release: make(chan struct{})}
	errc := make(chan error, 1)
	go func() { errc <- s.Copy(context.Background(), "bk_1", true, bw) }()

	w.Write([]byte("first\n"))
	<-bw.entered // the follower is now stuck writing "first\n"

	// Writers must not wait for it.
	written := make(chan struct{})
	line := strings.Repeat("y", 99) + "\n"
	go func() {
		defer close(written)
		for range 1000 {
			w.Write([]byte(line))
		}
		w.Write([]byte("last\n"))
	}()
	select {
	case <-written:
	case <-time.After(5 * time.Second):
		t.Fatal("writers blocked behind a stalled follower")
	}

	close(bw.release)
	s.Finish("bk_1")
	if err := wait(t, errc); err != nil {
		t.Fatal(err)
	}
	got := bw.String()
	if !strings.HasPrefix(got, "first\n[… ") || !strings.Contains(got, " bytes dropped]\n") || !strings.HasSuffix(got, line+"last\n") {
		t.Errorf("slow follower got %q…%q; want the first line, a dropped marker, then the newest lines",
			got[:min(len(got), 40)], got[max(0, len(got)-40):])
	}
}

func TestStore_Writer_concurrent(t *testing.T) {
	const writers, lines = 8, 500
	s := New(Config{})
	s.Open("bk_1")
	var out syncBuffer
	errc := follow(context.Background(), s, "bk_1", &out)

	var wg sync.WaitGroup
	for g := range writers {
		wg.Go(func() {
			w := s.Writer("bk_1")
			for i := range lines {
				fmt.Fprintf(w, "writer %d line %d\n", g, i)
			}
		})
	}
	wg.Wait()
	s.Finish("bk_1")
	if err := wait(t, errc); err != nil {
		t.Fatal(err)
	}

	for name, text := range map[string]string{"followed": out.String(), "history": history(t, s, "bk_1")} {
		got := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
		if len(got) != writers*lines {
			t.Errorf("%s: %d lines, want %d", name, len(got), writers*lines)
		}
		next := make([]int, writers) // each writer's lines arrive in order and whole
		for _, l := range got {
			var g, i int
			if _, err := fmt.Sscanf(l, "writer %d line %d", &g, &i); err != nil || g < 0 || g >= writers || i != next[g] {
				t.Fatalf("%s: unexpected line %q", name, l)
			}
			next[g]++
		}
	}
}

func TestStore_Finish_evicts(t *testing.T) {
	s := New(Config{Retain: 2})
	for _, id := range []string{"a", "b", "c", "live"} {
		s.Writer(id).Write([]byte(id + "\n"))
	}
	s.Finish("a")
	s.Finish("b")
	s.Finish("b") // twice: still one entry
	s.Finish("unknown")
	if got := history(t, s, "a"); got != "a\n" {
		t.Fatalf("a evicted too early: %q", got)
	}
	w := s.Writer("c")
	s.Finish("c")

	if err := s.Copy(context.Background(), "a", false, &bytes.Buffer{}); !errors.Is(err, berth.ErrNotFound) {
		t.Errorf("oldest finished log: %v, want ErrNotFound", err)
	}
	for _, id := range []string{"b", "c", "live"} {
		if got := history(t, s, id); got != id+"\n" {
			t.Errorf("%s = %q, want %q", id, got, id+"\n")
		}
	}
	w.Write([]byte("late\n")) // output draining after Finish is kept
	if got := history(t, s, "c"); got != "c\nlate\n" {
		t.Errorf("c after a late write = %q", got)
	}
}

func TestStore_Finish_evictsByBytes(t *testing.T) {
	s := New(Config{RetainBytes: 10})
	for _, id := range []string{"aaaa", "bbbb", "cccc"} {
		s.Writer(id).Write([]byte(id + "\n")) // 5 bytes each
		s.Finish(id)
	}
	if err := s.Copy(context.Background(), "aaaa", false, &bytes.Buffer{}); !errors.Is(err, berth.ErrNotFound) {
		t.Errorf("oldest finished log past the byte budget: %v, want ErrNotFound", err)
	}
	for _, id := range []string{"bbbb", "cccc"} {
		if got := history(t, s, id); got != id+"\n" {
			t.Errorf("%s = %q, want %q", id, got, id+"\n")
		}
	}
	// A single log larger than the budget stays, as the newest.
	s.Writer("big").Write(bytes.Repeat([]byte("x"), 20))
	s.Finish("big")
	if got := history(t, s, "big"); len(got) != 20 {
		t.Errorf("big = %q", got)
	}
	if err := s.Copy(context.Background(), "cccc", false, &bytes.Buffer{}); !errors.Is(err, berth.ErrNotFound) {
		t.Errorf("older log after a big one: %v, want ErrNotFound", err)
	}
}

func BenchmarkStore_Writer(b *testing.B) {
	s := New(Config{MaxBytes: 64 << 10})
	w := s.Writer("bk_1")
	line := []byte(strings.Repeat("x", 79) + "\n")
	b.SetBytes(int64(len(line)))
	b.ReportAllocs()
	for b.Loop() {
		w.Write(line)
	}
}
