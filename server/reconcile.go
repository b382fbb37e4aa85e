package server

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/runtime"
	"github.com/berthhq/berth/store"
)

// Reconcile makes the store and the runtimes agree after a start, including
// one after SIGKILL: every backend the store says is live is either
// re-adopted (the runtime still runs it) or stopped and terminated as lost,
// and anything a runtime runs that no live record owns is stopped and
// removed.
//
// A spawn records the backend (its id and runtime) before the runtime
// starts it, and a runtime can find whatever it started by that id alone
// (runtime.Lister), so a Berth killed between a start and the record of its
// handle leaves an instance that this finds: the record says scheduled, with
// no handle, and the runtime lists an instance for it. Such an instance is
// stopped before its record says lost: a record is terminated only once
// nothing of its backend runs, and its key is free only then.
func (m *Manager) Reconcile(ctx context.Context) error {
	bs, err := m.cfg.Store.Backends(ctx, store.Filter{Live: true})
	if err != nil {
		return fmt.Errorf("reconcile: list live backends: %w", err)
	}
	// What each runtime runs, listed before any record is judged.
	listed := make(map[string]map[string]*runtime.Handle) // runtime → backend id → handle
	for name, rt := range m.cfg.Runtimes {
		l, ok := rt.(runtime.Lister)
		if !ok {
			continue
		}
		hs, err := l.List(ctx)
		if err != nil {
			return fmt.Errorf("reconcile: list %s instances: %w", name, err)
		}
		byID := make(map[string]*runtime.Handle, len(hs))
		for _, h := range hs {
			byID[h.BackendID] = h
		}
		listed[name] = byID
	}
	m.startLateLists()
	for _, b := range bs {
		found := listed[b.Runtime][b.ID]
		delete(listed[b.Runtime], b.ID) // its record accounts for it
		if m.cfg.Node != "" && b.Node != "" && b.Node != m.cfg.Node {
			continue // another replica's backend: its node reconciles it
		}
		m.recover(ctx, b, found)
	}
	// Before serving: a key whose record is terminated is free, so what
	// still runs of its last holder must be gone first.
	for name, hs := range listed {
		m.removeUnowned(ctx, name, slices.Collect(maps.Values(hs)))
	}
	m.sweeper.Add(1)
	go m.sweepLoop()
	if m.cluster != nil {
		return m.followStore(ctx)
	}
	return nil
}

// removeUnowned stops and removes instances that no live record owns, a
// few at a time, and returns once all are done.
func (m *Manager) removeUnowned(ctx context.Context, runtimeName string, hs []*runtime.Handle) {
	rt := m.cfg.Runtimes[runtimeName]
	var wg sync.WaitGroup
	slots := make(chan struct{}, maxLostStops)
	for _, h := range hs {
		m.log.Warn("removing an instance no live backend owns", "runtime", runtimeName, "backend", h.BackendID)
		wg.Add(1)
		slots <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			if err := rt.Stop(ctx, h, "", 0); err != nil {
				m.log.Error("stop an instance no live backend owns", "backend", h.BackendID, "err", err)
				return
			}
			rt.Cleanup(ctx, h)
		}()
	}
	wg.Wait()
}

// Sweeps list the runtimes again after Reconcile, sweepFirst after it and
// then every sweepEvery, and once more at Shutdown: an engine may finish
// a create or a start that a killed Berth asked for after Reconcile
// listed what it runs, and nothing else would ever remove that instance.
var (
	sweepFirst = 5 * time.Second
	sweepEvery = time.Minute
)

func (m *Manager) sweepLoop() {
	defer m.sweeper.Done()
	t := time.NewTimer(sweepFirst)
	defer t.Stop()
	for {
		select {
		case <-m.ctx.Done():
			return
		case <-t.C:
			m.sweep(m.ctx)
			t.Reset(sweepEvery)
		}
	}
}

// sweep removes every listed instance whose backend is not live here and
// whose record is terminated. A backend being spawned is live in the store
// before its runtime starts anything.
func (m *Manager) sweep(ctx context.Context) {
	for name, rt := range m.cfg.Runtimes {
		l, ok := rt.(runtime.Lister)
		if !ok {
			continue
		}
		hs, err := l.List(ctx)
		if err != nil {
			m.log.Warn("sweep: list instances", "runtime", name, "err", err)
			continue
		}
		var unowned []*runtime.Handle
		for _, h := range hs {
			m.mu.Lock()
			here := m.live[h.BackendID] != nil
			m.mu.Unlock()
			if here {
				continue
			}
			b, err := m.cfg.Store.Backend(ctx, h.BackendID)
			if errors.Is(err, berth.ErrNotFound) {
				// Not started by a Berth on this store (every start is
				// recorded first): another Berth's, under the same
				// instance identity. Not this sweep's to remove.
				m.log.Warn("sweep: an instance of a backend this store does not know; is another Berth using the same runtime identity?", "runtime", name, "backend", h.BackendID)
				continue
			}
			if err != nil || b.State.Live() {
				continue
			}
			unowned = append(unowned, h)
		}
		m.removeUnowned(ctx, name, unowned)
	}
}

// recover re-adopts one live backend, or stops what may run of it and
// records it as lost. listed is the instance its runtime's List found for
// it, if any.
func (m *Manager) recover(ctx context.Context, b *berth.Backend, listed *runtime.Handle) {
	log := m.log.With("backend", b.ID, "key", b.Key)
	inst := newInstance(b, m.cfg.Runtimes[b.Runtime])
	if inst.rt == nil {
		// Nothing can be asked or stopped: the runtime is not configured
		// here (the operator removed it).
		m.lose(inst, nil, fmt.Sprintf("runtime %q is not available on this server", b.Runtime))
		return
	}
	h, err := decodeHandle(b.Handle)
	if err != nil {
		if listed != nil {
			m.lose(inst, listed, "Berth stopped while it was starting; its instance is stopped")
		} else {
			m.lose(inst, nil, "Berth stopped before it recorded the start, and no instance of it runs")
		}
		return
	}
	m.cfg.Logs.Open(b.ID)
	if err := inst.rt.Recover(ctx, h, m.cfg.Logs.Writer(b.ID)); err != nil {
		if errors.Is(err, runtime.ErrGone) {
			// What it started may outlive it (a child in its group).
			m.lose(inst, h, "it stopped while Berth was down")
		} else {
			m.lose(inst, h, "recover: "+err.Error())
		}
		return
	}
	log.Info("recovered backend", "state", b.State)
	if m.cfg.State != nil {
		if err := m.cfg.State.Resume(ctx, b); err != nil {
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
}

// lose terminates a backend as lost: terminating at once, terminated once
// what h names is stopped and removed (retried until the runtime confirms
// it) and the final save is done. For a start that was never recorded, a
// runtime whose starts can finish late (runtime.LateStarter) is asked
// again after its settle, and what it lists then is stopped too. The key stays held until then, but in
// the background, so Berth itself comes up while a runtime or the blob
// store is slow.
func (m *Manager) lose(inst *instance, h *runtime.Handle, why string) {
	m.log.Warn("backend lost", "backend", inst.id, "key", inst.key, "why", why)
	unrecorded := len(inst.snapshot().Handle) == 0 // a start Berth did not live to record
	m.transition(inst, store.Transition{To: berth.StateTerminating, Reason: berth.ReasonLost, Message: why})
	m.adopt(inst)
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		defer m.finish(inst)
		if h != nil && !m.stopLost(inst, h) {
			return // shutting down: the next start reconciles it again
		}
		if unrecorded && inst.rt != nil {
			late, ok := m.lateInstance(inst)
			if !ok {
				return // shutting down: the next start reconciles it again
			}
			if late != nil && !m.stopLost(inst, late) {
				return
			}
			if h == nil && late == nil {
				// Nothing of it ever ran: what Start made before the
				// fork (a directory) goes.
				inst.rt.Cleanup(m.ctx, &runtime.Handle{BackendID: inst.id, Runtime: inst.rt.Name()})
			}
		}
		m.afterExit(inst)
		m.terminate(inst, berth.ReasonLost, nil, why)
	}()
}

// lateInstance waits out the start settle of inst's runtime, if it has
// one (runtime.LateStarter), and returns the instance its runtime lists
// for inst then, if any: one that appeared after Reconcile listed (a
// create the engine finished late, a child that was not yet identifiable),
// or the one stopped before, which a second stop finds gone. ok is false
// when Berth shuts down before a listing succeeded.
func (m *Manager) lateInstance(inst *instance) (h *runtime.Handle, ok bool) {
	ll := m.lateLists[inst.rt.Name()]
	if ll == nil {
		return nil, true
	}
	select {
	case <-ll.done:
	case <-m.ctx.Done():
		return nil, false
	}
	if !ll.ok {
		return nil, false
	}
	return ll.byID[inst.id], true
}

// lateList is one listing of a runtime's instances, taken once its start
// settle has passed after Reconcile, and shared by every lost backend
// that waits for it.
type lateList struct {
	done chan struct{}
	ok   bool                       // the listing succeeded; set before done is closed
	byID map[string]*runtime.Handle // set before done is closed
}

// startLateLists starts, for each runtime whose starts can finish late,
// the one listing its lost backends' stops wait for.
func (m *Manager) startLateLists() {
	m.lateLists = make(map[string]*lateList)
	for name, rt := range m.cfg.Runtimes {
		ls, ok := rt.(runtime.LateStarter)
		l, lists := rt.(runtime.Lister)
		if !ok || !lists {
			continue
		}
		ll := &lateList{done: make(chan struct{}), byID: make(map[string]*runtime.Handle)}
		m.lateLists[name] = ll
		m.sweeper.Add(1)
		go func() {
			defer m.sweeper.Done()
			defer close(ll.done)
			select {
			case <-time.After(ls.StartSettle()):
			case <-m.ctx.Done():
				return
			}
			// Until a listing succeeds, the keys waiting for it stay held.
			for backoff := time.Second; ; backoff = min(2*backoff, 30*time.Second) {
				hs, err := l.List(m.ctx)
				if err == nil {
					for _, h := range hs {
						ll.byID[h.BackendID] = h
					}
					ll.ok = true
					return
				}
				m.log.Warn("list instances after the start settle; retrying", "runtime", name, "in", backoff, "err", err)
				select {
				case <-time.After(backoff):
				case <-m.ctx.Done():
					return
				}
			}
		}()
	}
}

// stopLost stops and removes the instance of a lost backend, retrying until
// the runtime says it is gone (true), or Berth shuts down (false).
func (m *Manager) stopLost(inst *instance, h *runtime.Handle) bool {
	backoff := 200 * time.Millisecond
	for attempt := 1; ; attempt++ {
		m.lostStops <- struct{}{} // bound the stops a restart runs at once
		err := inst.rt.Stop(m.ctx, h, "", 0)
		if err == nil {
			// For Docker the removal is what keeps a created container
			// from ever starting: it must succeed too.
			err = inst.rt.Cleanup(m.ctx, h)
		}
		<-m.lostStops
		if err == nil {
			return true
		}
		if m.ctx.Err() != nil {
			return false
		}
		m.log.Error("stop a lost backend's instance; retrying", "backend", inst.id, "attempt", attempt, "err", err)
		m.recordEvent(inst, fmt.Sprintf("stopping its instance failed (attempt %d): %v; retrying in %s", attempt, err, backoff))
		select {
		case <-time.After(backoff):
		case <-m.ctx.Done():
			return false
		}
		backoff = min(backoff*2, 30*time.Second)
	}
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
