package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/runtime"
	"github.com/prometheus/client_golang/prometheus"
)

// Frozen backends (spawn idle_action "freeze").
//
// Frozen is a flag on a ready backend, not a lifecycle state: states only
// move forward and a backend goes from frozen to running and back many
// times, and a frozen backend stays routable (a request thaws it). Only
// its lifecycle goroutine freezes and thaws it; everyone else asks.
//
// The proxy's fast path pays one atomic load for it: ResolveReady answers
// "not ready" for a frozen backend, so the request takes the slow path,
// where Resolve asks for a thaw and waits for it. A request that got its
// route just before the freeze is caught by Begin: Begin raises the
// backend's activity count before it reads the flag, and freeze sets the
// flag before it reads that count, so one of the two sees the other —
// either the freeze is called off, or Begin asks for a thaw.

// freezeHold is an instance's frozen flag and what waits on it.
type freezeHold struct {
	frozen atomic.Bool // set from just before a freeze until the thaw is done

	mu     sync.Mutex
	wake   chan struct{} // a send asks the lifecycle to thaw (buffered)
	thawed chan struct{} // closed once thawed, or the freeze called off
	mem    int64         // memory held while frozen, in bytes

	// lastEvent is closed once the previous frozen/thawed event is
	// written; only the lifecycle goroutine touches it.
	lastEvent chan struct{}
}

// begin sets the flag for a freeze about to happen.
func (f *freezeHold) begin() {
	f.mu.Lock()
	f.wake = make(chan struct{}, 1)
	f.thawed = make(chan struct{})
	f.mu.Unlock()
	f.frozen.Store(true)
}

// end clears the flag and releases the requests that waited for a thaw.
func (f *freezeHold) end() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.frozen.Load() {
		return
	}
	f.frozen.Store(false)
	f.mem = 0
	close(f.thawed)
}

// requestThaw asks the lifecycle to thaw, and returns what closes once it
// has (nil when not frozen).
func (f *freezeHold) requestThaw() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.frozen.Load() {
		return nil
	}
	select {
	case f.wake <- struct{}{}:
	default:
	}
	return f.thawed
}

// awaitThaw asks for a thaw and waits for it, for the backend's end, or
// for ctx.
func (i *instance) awaitThaw(ctx context.Context) error {
	thawed := i.fz.requestThaw()
	if thawed == nil {
		return nil
	}
	select {
	case <-thawed:
		return nil
	case <-i.done:
		return nil // the caller finds it gone
	case <-ctx.Done():
		return fmt.Errorf("backend %s is thawing: %w", i.id, ctx.Err())
	}
}

// freezeTimeout bounds each freeze, thaw and memory reading: a runtime
// that hangs (an engine that does not answer) must not keep the lifecycle
// from stopping the backend.
const freezeTimeout = 30 * time.Second

// frozenEnd is how a frozen spell ended: thawed (the backend runs on), or
// it must stop (why), or it exited while frozen (exit).
type frozenEnd struct {
	thawed bool
	why    berth.Reason
	hard   bool
	cause  string
	exit   *runtime.Exit
}

// freezeIdle freezes an idle backend and holds it frozen until a thaw is
// asked for, a stop is requested, max_frozen_seconds pass, its lifetime
// ends, or it exits. It runs in the backend's lifecycle goroutine, which
// has just found the backend idle.
func (m *Manager) freezeIdle(ctx context.Context, inst *instance, h *runtime.Handle, exitC chan runtime.Exit, life <-chan time.Time, log *slog.Logger) frozenEnd {
	b := inst.snapshot()
	fr, ok := inst.rt.(runtime.Freezer)
	if !ok { // a runtime that lost the ability since the spawn: stop as before
		return frozenEnd{why: berth.ReasonIdle}
	}
	seen := inst.lastActive.Load()
	inst.fz.begin()
	if inst.active.Load() > 0 || inst.lastActive.Load() != seen {
		inst.fz.end() // traffic came in meanwhile: not idle after all
		return frozenEnd{thawed: true}
	}
	fctx, cancel := context.WithTimeout(ctx, freezeTimeout)
	err := fr.Freeze(fctx, h)
	cancel()
	if err != nil {
		// Whatever froze must run again to handle its stop signal.
		tctx, cancel := context.WithTimeout(context.Background(), freezeTimeout)
		thawErr := fr.Thaw(tctx, h)
		cancel()
		inst.fz.end()
		log.Warn("freeze failed; stopping instead", "err", err, "thaw_err", thawErr)
		return frozenEnd{why: berth.ReasonIdle, cause: "freeze failed: " + err.Error()}
	}
	mctx, cancel := context.WithTimeout(ctx, freezeTimeout)
	mem, err := fr.Memory(mctx, h)
	cancel()
	if err != nil {
		log.Debug("memory of a frozen backend", "err", err)
	}
	at := time.Now().UTC()
	inst.mu.Lock()
	inst.b.FrozenAt = &at
	inst.mu.Unlock()
	inst.fz.mu.Lock()
	inst.fz.mem = mem
	inst.fz.mu.Unlock()
	maxFrozen := b.Spawn.MaxFrozen()
	log.Info("frozen", "idle", b.Spawn.MaxIdle(), "memory", mem)
	m.freezeEvent(inst, fmt.Sprintf("frozen: idle for %s; holds %d MiB; stopped after %s frozen unless a request comes",
		b.Spawn.MaxIdle(), mem>>20, maxFrozen))

	limit := time.NewTimer(maxFrozen)
	defer limit.Stop()
	var end frozenEnd
	select {
	case e := <-exitC:
		m.unfreeze(inst)
		inst.fz.end()
		return frozenEnd{exit: &e}
	case <-inst.fz.wake:
		end = frozenEnd{thawed: true}
	case <-inst.stopC:
		end.why, end.hard = inst.stopRequest()
	case <-limit.C:
		end = frozenEnd{why: berth.ReasonIdle, cause: fmt.Sprintf("frozen for max_frozen_seconds (%s): stopped", maxFrozen)}
	case <-life:
		end = frozenEnd{why: berth.ReasonLifetime}
	}
	// Thawed before a stop too: a frozen program cannot handle its stop
	// signal or make its final save.
	start := time.Now()
	tctx, cancel := context.WithTimeout(context.Background(), freezeTimeout)
	err = fr.Thaw(tctx, h)
	cancel()
	if err != nil && !errors.Is(err, runtime.ErrGone) {
		log.Error("thaw failed; killing", "err", err)
		end = frozenEnd{why: berth.ReasonIdle, hard: true, cause: "thaw failed: " + err.Error()}
	}
	inst.lastActive.Store(monoNow()) // the idle clock starts again
	// The record first: whoever waited for the thaw sees it not frozen.
	m.unfreeze(inst)
	inst.fz.end()
	took := time.Since(start)
	if end.thawed {
		log.Info("thawed", "took", took, "frozen_for", time.Since(at))
		m.freezeEvent(inst, fmt.Sprintf("thawed after %s frozen (thaw took %s)", time.Since(at).Round(time.Millisecond), took.Round(time.Microsecond)))
	}
	return end
}

// freezeEvent appends msg to the backend's history beside the lifecycle,
// in order: a frozen backend's lifecycle must stay free to thaw it, or to
// stop it when a cut-off replica must, however long the store takes.
func (m *Manager) freezeEvent(inst *instance, msg string) {
	ev, ok := m.cfg.Store.(interface {
		AddEvent(ctx context.Context, id string, msg string) error
	})
	if !ok {
		return
	}
	prev, done := inst.fz.lastEvent, make(chan struct{})
	inst.fz.lastEvent = done
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		defer close(done)
		if prev != nil {
			<-prev
		}
		ctx, cancel := m.writeContext()
		defer cancel()
		if err := ev.AddEvent(ctx, inst.id, msg); err != nil {
			m.log.Warn("record a freeze event", "backend", inst.id, "err", err)
			return
		}
		m.publish(inst.id)
	}()
}

// unfreeze clears the record's frozen mark.
func (m *Manager) unfreeze(inst *instance) {
	inst.mu.Lock()
	inst.b.FrozenAt = nil
	inst.mu.Unlock()
	m.publish(inst.id)
}

// thawRecovered thaws a backend a restarted Berth re-adopts: it may have
// been frozen by the Berth before, which took the flag with it.
func (m *Manager) thawRecovered(inst *instance, h *runtime.Handle, log *slog.Logger) {
	fr, ok := inst.rt.(runtime.Freezer)
	if !ok || !inst.snapshot().Spawn.Freezes() {
		return
	}
	if err := fr.Thaw(m.ctx, h); err != nil && !errors.Is(err, runtime.ErrGone) {
		log.Warn("thaw of a re-adopted backend", "err", err)
	}
}

var (
	frozenDesc    = prometheus.NewDesc("berth_backends_frozen", "Live backends this Berth holds frozen (idle_action freeze).", nil, nil)
	frozenMemDesc = prometheus.NewDesc("berth_frozen_memory_bytes", "Memory held by the backends this Berth holds frozen, as their runtime measured it when they froze.", nil, nil)
)

func describeFrozen(ch chan<- *prometheus.Desc) {
	ch <- frozenDesc
	ch <- frozenMemDesc
}

func collectFrozen(ch chan<- prometheus.Metric, insts []*instance) {
	var n, mem int64
	for _, inst := range insts {
		if !inst.fz.frozen.Load() {
			continue
		}
		n++
		inst.fz.mu.Lock()
		mem += inst.fz.mem
		inst.fz.mu.Unlock()
	}
	ch <- prometheus.MustNewConstMetric(frozenDesc, prometheus.GaugeValue, float64(n))
	ch <- prometheus.MustNewConstMetric(frozenMemDesc, prometheus.GaugeValue, float64(mem))
}
