package server

import (
	"context"
	"errors"
	"fmt"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/runtime"
	"github.com/berthhq/berth/store"
)

// Reconcile makes the store and the runtimes agree after a start, including
// one after SIGKILL: every backend the store says is live is either
// re-adopted (the runtime still runs it) or terminated as lost, and anything a
// runtime runs that no live record owns is stopped and removed.
func (m *Manager) Reconcile(ctx context.Context) error {
	bs, err := m.cfg.Store.Backends(ctx, store.Filter{Live: true})
	if err != nil {
		return fmt.Errorf("reconcile: list live backends: %w", err)
	}
	owned := make(map[string]bool)
	for _, b := range bs {
		if m.cfg.Node != "" && b.Node != "" && b.Node != m.cfg.Node {
			continue // another replica's backend
		}
		if m.recover(ctx, b) {
			owned[b.ID] = true
		}
	}
	for name, rt := range m.cfg.Runtimes {
		l, ok := rt.(runtime.Lister)
		if !ok {
			continue
		}
		hs, err := l.List(ctx)
		if err != nil {
			return fmt.Errorf("reconcile: list %s instances: %w", name, err)
		}
		for _, h := range hs {
			if owned[h.BackendID] {
				continue
			}
			m.log.Warn("removing an instance no live backend owns", "runtime", name, "backend", h.BackendID)
			if err := rt.Stop(ctx, h, "", 0); err != nil {
				m.log.Error("stop orphan", "backend", h.BackendID, "err", err)
			}
			rt.Cleanup(ctx, h)
		}
	}
	return nil
}

// recover re-adopts one live backend, or records it as lost. It reports
// whether the backend is running again under this Manager.
func (m *Manager) recover(ctx context.Context, b *berth.Backend) bool {
	log := m.log.With("backend", b.ID, "key", b.Key)
	inst := newInstance(b, m.cfg.Runtimes[b.Runtime])
	lost := func(why string) bool {
		log.Warn("backend lost", "why", why)
		m.transition(inst, storeTransition(berth.StateTerminating, berth.ReasonLost, why))
		// The final save may wait on a blob store that is down: do it in
		// the background, with the key held, so Berth itself comes up.
		m.adopt(inst)
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			defer m.finish(inst)
			m.afterExit(inst)
			m.terminate(inst, berth.ReasonLost, nil, why)
		}()
		return false
	}
	if inst.rt == nil {
		return lost(fmt.Sprintf("runtime %q is not available on this server", b.Runtime))
	}
	h, err := decodeHandle(b.Handle)
	if err != nil {
		return lost("it never started: " + err.Error())
	}
	m.cfg.Logs.Open(b.ID)
	if err := inst.rt.Recover(ctx, h, m.cfg.Logs.Writer(b.ID)); err != nil {
		if errors.Is(err, runtime.ErrGone) {
			inst.rt.Cleanup(ctx, h)
			return lost("it stopped while Berth was down")
		}
		return lost("recover: " + err.Error())
	}
	log.Info("recovered backend", "state", b.State)
	if m.cfg.Hooks.Recovered != nil {
		if err := m.cfg.Hooks.Recovered(ctx, b); err != nil {
			log.Error("resume state saving", "err", err)
		}
	}
	m.adopt(inst)
	if b.State == berth.StateTerminating {
		why := b.Reason
		if why == "" {
			why = berth.ReasonRequested
		}
		inst.requestStop(why, false)
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		m.run(inst, &recovery{handle: h})
	}()
	return true
}

func storeTransition(to berth.State, why berth.Reason, msg string) store.Transition {
	return store.Transition{To: to, Reason: why, Message: msg}
}

// adopt makes inst one of this Manager's live backends.
func (m *Manager) adopt(inst *instance) {
	m.mu.Lock()
	m.live[inst.id] = inst
	if inst.key != "" {
		m.byKey[inst.key] = inst
	}
	m.mu.Unlock()
}
