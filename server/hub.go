package server

import (
	"context"
	"errors"
	"sync"

	"github.com/berthhq/berth"
)

// hub tells subscribers that a backend changed. A signal carries no
// payload: subscribers re-read the store's history, so a missed or merged
// signal can never lose an event.
//
// The subscribers of one backend (an app's tabs on one document, say) all
// wake on the same signal and ask for the history after the same event, so
// the hub shares those reads: one store read per backend, signal and
// starting point, however many subscribers ask. A shared read is valid
// until the next signal (gen counts them). Each signal follows its store
// write, and gen moves before anyone is woken, so a subscriber that woke
// for a change always reads after it: a read shared under gen g may miss
// only a change whose signal is still to come.
//
// Watchers hear of every backend (the dashboard's list): each keeps the
// set of ids changed since it last took them, so a slow reader sees every
// backend that changed, at its latest state, however many signals merged.
type hub struct {
	mu       sync.Mutex
	topics   map[string]*topic
	watchers map[*watcher]struct{}
}

type watcher struct {
	c   chan struct{}
	ids map[string]struct{} // changed since the last take; guarded by hub.mu
}

type topic struct {
	subs  map[chan struct{}]struct{}
	gen   uint64
	reads map[int64]*sharedRead // by the seq the history is read after; this gen's only
}

type sharedRead struct {
	done chan struct{} // closed once evs and err are set
	evs  []berth.Event // shared: read only
	err  error
}

func newHub() *hub {
	return &hub{topics: make(map[string]*topic), watchers: make(map[*watcher]struct{})}
}

func (h *hub) subscribe(id string) (<-chan struct{}, func()) {
	c := make(chan struct{}, 1)
	h.mu.Lock()
	t := h.topics[id]
	if t == nil {
		t = &topic{subs: make(map[chan struct{}]struct{})}
		h.topics[id] = t
	}
	t.subs[c] = struct{}{}
	h.mu.Unlock()
	return c, func() {
		h.mu.Lock()
		delete(t.subs, c)
		if len(t.subs) == 0 && h.topics[id] == t {
			delete(h.topics, id)
		}
		h.mu.Unlock()
	}
}

// watch subscribes to every backend's changes. changed receives a value
// when take has ids to return; take returns the ids of the backends that
// changed since its last call.
func (h *hub) watch() (changed <-chan struct{}, take func() []string, cancel func()) {
	w := &watcher{c: make(chan struct{}, 1), ids: make(map[string]struct{})}
	h.mu.Lock()
	h.watchers[w] = struct{}{}
	h.mu.Unlock()
	take = func() []string {
		h.mu.Lock()
		defer h.mu.Unlock()
		ids := make([]string, 0, len(w.ids))
		for id := range w.ids {
			ids = append(ids, id)
		}
		clear(w.ids)
		return ids
	}
	return w.c, take, func() {
		h.mu.Lock()
		delete(h.watchers, w)
		h.mu.Unlock()
	}
}

func (h *hub) publish(id string) {
	h.mu.Lock()
	for w := range h.watchers {
		w.ids[id] = struct{}{}
		select {
		case w.c <- struct{}{}:
		default:
		}
	}
	if t := h.topics[id]; t != nil {
		t.gen++
		t.reads = nil
		for c := range t.subs {
			select {
			case c <- struct{}{}:
			default: // a signal is already pending; it covers this change too
			}
		}
	}
	h.mu.Unlock()
}

// events returns id's history after seq by load, sharing the read with
// every caller asking the same of a subscribed backend since its last
// signal. The slice is shared: callers must not modify it.
func (h *hub) events(ctx context.Context, id string, after int64, load func(context.Context) ([]berth.Event, error)) ([]berth.Event, error) {
	h.mu.Lock()
	t := h.topics[id]
	if t == nil { // nobody subscribed: nothing to share
		h.mu.Unlock()
		return load(ctx)
	}
	if r := t.reads[after]; r != nil {
		h.mu.Unlock()
		select {
		case <-r.done:
			return r.evs, r.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	r := &sharedRead{done: make(chan struct{})}
	if t.reads == nil {
		t.reads = make(map[int64]*sharedRead)
	}
	t.reads[after] = r
	reads := t.reads
	h.mu.Unlock()

	// Others may wait on this read: it must not end with this caller, and
	// must end for them even if load panics.
	r.err = errReadAbandoned
	defer func() {
		if r.err != nil { // not worth sharing: let the next caller try again
			h.mu.Lock()
			if reads[after] == r {
				delete(reads, after)
			}
			h.mu.Unlock()
		}
		close(r.done)
	}()
	r.evs, r.err = load(context.WithoutCancel(ctx))
	return r.evs, r.err
}

// errReadAbandoned is what waiters on a shared read get if it panicked.
var errReadAbandoned = errors.New("reading the history failed")
