package store

import (
	"context"
	"sync"
)

// FeedBuffer is how many changes a watcher may fall behind before the
// feed drops them and tells it to resync.
const FeedBuffer = 1024

// Feed fans Changes out to watchers for an adapter's Watch. Publishing
// never blocks: each watcher has a queue of its own, drained by a goroutine
// of its own, and a queue that overflows is replaced by one Resync. The
// zero Feed is ready to use.
type Feed struct {
	mu      sync.Mutex
	closed  bool
	subs    map[*watcher]struct{}
	running sync.WaitGroup
}

type watcher struct {
	mu    sync.Mutex
	queue []Change
	wake  chan struct{} // capacity 1: something was queued
	quit  chan struct{} // closed when the feed closes
}

// Watch returns a channel of the changes published from now on, closed
// when ctx ends or the feed closes.
func (f *Feed) Watch(ctx context.Context) <-chan Change {
	out := make(chan Change)
	w := &watcher{wake: make(chan struct{}, 1), quit: make(chan struct{})}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		close(out)
		return out
	}
	if f.subs == nil {
		f.subs = map[*watcher]struct{}{}
	}
	f.subs[w] = struct{}{}
	f.running.Add(1)
	go func() {
		defer f.running.Done()
		defer close(out)
		defer func() {
			f.mu.Lock()
			delete(f.subs, w)
			f.mu.Unlock()
		}()
		for {
			select {
			case <-w.wake:
			case <-ctx.Done():
				return
			case <-w.quit:
				return
			}
			w.mu.Lock()
			batch := w.queue
			w.queue = nil
			w.mu.Unlock()
			for _, c := range batch {
				select {
				case out <- c:
				case <-ctx.Done():
					return
				case <-w.quit:
					return
				}
			}
		}
	}()
	return out
}

// Publish queues cs for every watcher.
func (f *Feed) Publish(cs ...Change) {
	if len(cs) == 0 {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for w := range f.subs {
		w.push(cs)
	}
}

// Resync tells every watcher that changes may have been missed.
func (f *Feed) Resync() { f.Publish(Change{Resync: true}) }

func (w *watcher) push(cs []Change) {
	w.mu.Lock()
	if len(w.queue)+len(cs) > FeedBuffer {
		// The Resync stands for everything dropped; what comes later
		// queues behind it.
		w.queue = append(w.queue[:0], Change{Resync: true})
	} else {
		w.queue = append(w.queue, cs...)
	}
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// Close closes every watcher's channel and waits for their goroutines.
func (f *Feed) Close() {
	f.mu.Lock()
	if !f.closed {
		f.closed = true
		for w := range f.subs {
			close(w.quit)
		}
	}
	f.mu.Unlock()
	f.running.Wait()
}
