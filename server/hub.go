package server

import "sync"

// hub tells subscribers that a backend changed. It carries no payload:
// subscribers re-read the store's history, so a missed or merged signal can
// never lose an event.
type hub struct {
	mu   sync.Mutex
	subs map[string]map[chan struct{}]struct{}
}

func newHub() *hub { return &hub{subs: make(map[string]map[chan struct{}]struct{})} }

func (h *hub) subscribe(id string) (<-chan struct{}, func()) {
	c := make(chan struct{}, 1)
	h.mu.Lock()
	if h.subs[id] == nil {
		h.subs[id] = make(map[chan struct{}]struct{})
	}
	h.subs[id][c] = struct{}{}
	h.mu.Unlock()
	return c, func() {
		h.mu.Lock()
		delete(h.subs[id], c)
		if len(h.subs[id]) == 0 {
			delete(h.subs, id)
		}
		h.mu.Unlock()
	}
}

func (h *hub) publish(id string) {
	h.mu.Lock()
	for c := range h.subs[id] {
		select {
		case c <- struct{}{}:
		default: // a signal is already pending; it covers this change too
		}
	}
	h.mu.Unlock()
}
