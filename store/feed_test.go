package store

import (
	"context"
	"testing"
	"time"
)

func recv(t *testing.T, ch <-chan Change) (Change, bool) {
	t.Helper()
	select {
	case c, ok := <-ch:
		return c, ok
	case <-time.After(5 * time.Second):
		t.Fatal("nothing within 5s")
	}
	return Change{}, false
}

func TestFeed_InOrder(t *testing.T) {
	var f Feed
	defer f.Close()
	a, b := f.Watch(t.Context()), f.Watch(t.Context())
	for i := range int64(10) {
		f.Publish(Change{Seq: i + 1})
	}
	for _, ch := range []<-chan Change{a, b} {
		for i := range int64(10) {
			if c, _ := recv(t, ch); c.Seq != i+1 || c.Resync {
				t.Fatalf("change %d = %+v, want seq %d", i, c, i+1)
			}
		}
	}
}

// A watcher that does not read never blocks Publish; once it falls more
// than FeedBuffer behind it gets one Resync in place of what it missed,
// then what came after.
func TestFeed_Overflow(t *testing.T) {
	var f Feed
	defer f.Close()
	slow := f.Watch(t.Context())
	// Its goroutine holds at most one batch (≤ FeedBuffer) and queues at
	// most FeedBuffer more: three times that must overflow.
	const n = 3 * FeedBuffer
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range int64(n) {
			f.Publish(Change{Seq: i + 1})
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Publish blocked on a watcher that does not read")
	}
	resyncs, got := 0, 0
	var last int64
	for last < n {
		c, _ := recv(t, slow)
		switch {
		case c.Resync:
			resyncs++
		case c.Seq <= last:
			t.Fatalf("seq %d after %d", c.Seq, last)
		default:
			last = c.Seq
			got++
		}
	}
	if resyncs == 0 || got >= n {
		t.Errorf("%d changes of %d and %d Resyncs; want some dropped, and a Resync for them", got, n, resyncs)
	}
	f.Publish(Change{Seq: n + 1})
	if c, _ := recv(t, slow); c.Seq != n+1 {
		t.Errorf("after catching up: %+v, want seq %d", c, n+1)
	}
}

func TestFeed_Resync(t *testing.T) {
	var f Feed
	defer f.Close()
	ch := f.Watch(t.Context())
	f.Resync()
	if c, _ := recv(t, ch); !c.Resync {
		t.Errorf("got %+v, want a Resync", c)
	}
}

func TestFeed_Ends(t *testing.T) {
	var f Feed
	ctx, cancel := context.WithCancel(t.Context())
	byCtx, byClose := f.Watch(ctx), f.Watch(t.Context())
	cancel()
	if _, ok := recv(t, byCtx); ok {
		t.Error("a watch whose context ended is still open")
	}
	f.Close()
	if _, ok := recv(t, byClose); ok {
		t.Error("a watch is still open after Close")
	}
	if _, ok := recv(t, f.Watch(t.Context())); ok {
		t.Error("a watch begun after Close is open")
	}
	f.Publish(Change{Seq: 1}) // no watcher, no panic
}
