package server

import (
	"context"
	"fmt"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/proxy"
)

var (
	_ proxy.Resolver      = (*Manager)(nil)
	_ proxy.ReadyResolver = (*Manager)(nil)
)

// ResolveReady implements proxy.ReadyResolver: a route to a backend that
// answers now (it is ready, or its ready is being recorded, or it is
// terminating), without waiting.
func (m *Manager) ResolveReady(id string) (proxy.Route, bool) {
	m.mu.Lock()
	inst := m.live[id]
	m.mu.Unlock()
	if inst == nil {
		return m.cachedRemote(id)
	}
	select {
	case <-inst.answered:
	default:
		return proxy.Route{}, false
	}
	if inst.fz.frozen.Load() {
		return proxy.Route{}, false // Resolve thaws it
	}
	return inst.route()
}

// route is where to send the backend's traffic, once it answered HTTP.
func (i *instance) route() (proxy.Route, bool) {
	i.mu.Lock()
	state, addr, secret := i.b.State, i.addr, i.b.Secret
	i.mu.Unlock()
	if state == berth.StateTerminated || addr == "" {
		return proxy.Route{}, false
	}
	return proxy.Route{BackendID: i.id, Addr: addr, Secret: secret, Activity: i}, true
}

// Resolve implements proxy.Resolver: it answers from memory, waiting while
// the backend starts, and consults the store only for backends that are not
// live here: to tell "gone" from "never existed" or, for a replica, to find
// the node that runs it.
func (m *Manager) Resolve(ctx context.Context, id string) (proxy.Route, error) {
	m.mu.Lock()
	inst := m.live[id]
	m.mu.Unlock()
	if inst == nil {
		return m.resolveStored(ctx, id)
	}
	// Only a request that a kept probe connection can carry counts as
	// waiting for one (see probeConnReuser).
	if proxy.Pooled(ctx) {
		inst.waiting.Add(1)
		defer inst.waiting.Add(-1)
	}
	select {
	case <-inst.answered:
	case <-ctx.Done():
		return proxy.Route{}, fmt.Errorf("backend %s is still starting: %w", id, ctx.Err())
	}
	if err := inst.awaitThaw(ctx); err != nil {
		return proxy.Route{}, err
	}
	r, ok := inst.route()
	if !ok {
		return proxy.Route{}, proxy.ErrGone
	}
	return r, nil
}

// resolveStored resolves a backend this Manager does not run: gone, or, for
// a replica, live on another node (whose proxy gets the request) or placed
// here and about to be picked up.
func (m *Manager) resolveStored(ctx context.Context, id string) (proxy.Route, error) {
	if r, ok := m.cachedRemote(id); ok {
		return r, nil
	}
	var changed <-chan struct{}
	for {
		b, err := m.cfg.Store.Backend(ctx, id)
		if err != nil {
			return proxy.Route{}, err
		}
		if m.cluster == nil || !b.State.Live() {
			return proxy.Route{}, proxy.ErrGone
		}
		if b.Node != m.cfg.Node {
			if r, ok := m.resolveRemote(ctx, b); ok {
				return r, nil
			}
			return proxy.Route{}, fmt.Errorf("backend %s runs on node %s, whose proxy address is unknown", id, b.Node)
		}
		m.mu.Lock()
		inst := m.live[id]
		m.mu.Unlock()
		if inst != nil {
			return m.Resolve(ctx, id)
		}
		if changed == nil { // placed here: wait for the pick-up
			var unsubscribe func()
			changed, unsubscribe = m.hub.subscribe(id)
			defer unsubscribe()
			continue
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return proxy.Route{}, fmt.Errorf("backend %s is still starting: %w", id, ctx.Err())
		}
	}
}
