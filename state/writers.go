package state

import (
	"sync"
	"time"
)

// writers gates a backend's own saves around its end: once Berth starts the
// final save, no new write of that backend is admitted and the ones in
// flight are waited for, so nothing of a terminated backend lands later.
type writers struct {
	mu       sync.Mutex
	inflight map[string]*sync.WaitGroup
	closed   map[string]time.Time // backend id → when its writes were closed
}

func newWriters() *writers {
	return &writers{inflight: make(map[string]*sync.WaitGroup), closed: make(map[string]time.Time)}
}

// begin admits one write by backend id, returning what to call when it is
// done; nil once its writes are closed.
func (w *writers) begin(id string) (end func()) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.closed[id]; ok {
		return nil
	}
	wg := w.inflight[id]
	if wg == nil {
		wg = new(sync.WaitGroup)
		w.inflight[id] = wg
	}
	wg.Add(1)
	return wg.Done
}

// close refuses further writes by id and waits for those in flight.
func (w *writers) close(id string) {
	w.mu.Lock()
	now := time.Now()
	w.closed[id] = now
	// The mark only has to outlive the backend's move to terminated, after
	// which it is no longer live and every write is refused anyway.
	for k, at := range w.closed {
		if now.Sub(at) > time.Hour {
			delete(w.closed, k)
		}
	}
	wg := w.inflight[id]
	delete(w.inflight, id)
	w.mu.Unlock()
	if wg != nil {
		wg.Wait()
	}
}
