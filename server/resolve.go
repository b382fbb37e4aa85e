package server

import (
	"context"
	"fmt"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/proxy"
)

var _ proxy.Resolver = (*Manager)(nil)

// Resolve implements proxy.Resolver: it answers from memory, waiting while
// the backend starts, and consults the store only for backends that are not
// live here (to tell "gone" from "never existed").
func (m *Manager) Resolve(ctx context.Context, id string) (proxy.Route, error) {
	m.mu.Lock()
	inst := m.live[id]
	m.mu.Unlock()
	if inst == nil {
		if _, err := m.cfg.Store.Backend(ctx, id); err != nil {
			return proxy.Route{}, err
		}
		return proxy.Route{}, proxy.ErrGone
	}
	select {
	case <-inst.ready:
	case <-ctx.Done():
		return proxy.Route{}, fmt.Errorf("backend %s is still starting: %w", id, ctx.Err())
	}
	inst.mu.Lock()
	state, addr, secret := inst.b.State, inst.addr, inst.b.Secret
	inst.mu.Unlock()
	if state == berth.StateTerminated || addr == "" {
		return proxy.Route{}, proxy.ErrGone
	}
	return proxy.Route{BackendID: id, Addr: addr, Secret: secret, Activity: inst}, nil
}
