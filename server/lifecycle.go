package server

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/runtime"
	"github.com/berthhq/berth/store"
)

// recovery carries what Reconcile learned about a backend it re-adopted.
type recovery struct {
	handle *runtime.Handle
}

// run drives one backend from scheduled (or its recovered state) to
// terminated. It is the only code that moves the backend's state.
func (m *Manager) run(inst *instance, rec *recovery) {
	ctx := m.ctx
	b := inst.snapshot()
	log := m.log.With("backend", b.ID, "key", b.Key)
	defer m.finish(inst)

	var (
		h  *runtime.Handle
		rd *readiness // a fresh start's probe, already running
	)
	if rec != nil {
		h = rec.handle
		m.thawRecovered(inst, h, log)
		inst.setAddr(h.Addr)
	} else {
		var err error
		h, rd, err = m.start(ctx, inst, b, log)
		if err != nil {
			log.Warn("spawn failed", "err", err)
			m.terminate(inst, berth.ReasonSpawnFailed, nil, err.Error())
			return
		}
	}

	exitC := make(chan runtime.Exit, 1)
	go func() {
		e, err := inst.rt.Wait(ctx, h)
		if err != nil && e.Err == nil {
			e.Err = err
			e.Code = -1
		}
		exitC <- e
	}()

	if inst.state() != berth.StateReady {
		if rd == nil {
			rd = m.probeReady(ctx, inst, b, h, closedGate)
		}
		if !m.awaitReady(ctx, inst, b, h, rd, exitC, log) {
			return
		}
	} else {
		inst.markReadyRecorded()
	}
	m.supervise(ctx, inst, b, h, exitC, log)
}

// start builds the runtime spec, starts the backend, records the start
// with its handle, and returns the handle with the backend's readiness
// probe, which it starts as soon as the runtime has given an address: the
// probe runs while the start is recorded, and opens the route only after.
func (m *Manager) start(ctx context.Context, inst *instance, b *berth.Backend, log *slog.Logger) (*runtime.Handle, *readiness, error) {
	spec := runtime.Spec{
		BackendID: b.ID,
		Key:       b.Key,
		Spawn:     b.Spawn,
		Env:       make(map[string]string, len(b.Spawn.Env)+6),
	}
	for k, v := range b.Spawn.Env {
		spec.Env[k] = v
	}
	spec.Port = 8080 // containers each have their own network namespace
	if pc, ok := inst.rt.(runtime.PortChooser); ok {
		p, err := pc.ChoosePort()
		if err != nil {
			return nil, nil, fmt.Errorf("pick a port: %w", err)
		}
		spec.Port = p
	} else if inst.rt.Name() == "process" && m.cfg.FreePort != nil {
		p, err := m.cfg.FreePort()
		if err != nil {
			return nil, nil, fmt.Errorf("pick a port: %w", err)
		}
		spec.Port = p
	}
	spec.Env["PORT"] = strconv.Itoa(spec.Port)
	spec.Env["BERTH_BACKEND_ID"] = b.ID
	if unclaimed(b) {
		pooledEnv(spec.Env, b) // the rest comes with its claim (pool.go)
	} else {
		spec.Env["BERTH_KEY"] = b.Key
		spec.Env["BERTH_SECRET"] = b.Secret
		spec.Env["BERTH_FENCING_TOKEN"] = strconv.FormatInt(b.FencingToken, 10)
	}
	m.cfg.Logs.Open(b.ID)
	spec.Logs = m.cfg.Logs.Writer(b.ID)
	if m.cfg.State != nil && !unclaimed(b) {
		if err := m.cfg.State.Prepare(ctx, b, &spec); err != nil {
			return nil, nil, fmt.Errorf("prepare state: %w", err)
		}
	}
	// starting is recorded together with the runtime handle, in one write
	// once the runtime has started the backend, dated when the start began.
	// The record made before (CreateBackend) already says which backend
	// and which runtime, and the runtime can find what it starts by the
	// backend's id alone (runtime.Lister): a crash before this write leaves
	// the backend scheduled without a handle, and Reconcile stops the
	// instance its runtime lists for it before recording it lost.
	at := time.Now().UTC()
	h, err := inst.rt.Start(ctx, spec)
	if err != nil {
		// The history still reads scheduled, starting, terminated.
		m.transition(inst, store.Transition{To: berth.StateStarting, At: at})
		return nil, nil, err
	}
	inst.setAddr(h.Addr)
	recorded := make(chan struct{})
	rd := m.probeReady(ctx, inst, b, h, recorded)
	if err := m.record(inst, store.Transition{To: berth.StateStarting, At: at, Handle: encodeHandle(h)}); err != nil {
		// Without a persisted handle a restarted Berth could not find this
		// backend again, so do not let it run (nor route to it: the probe
		// ends without opening the route).
		rd.cancel()
		<-rd.done
		inst.rt.Stop(context.Background(), h, "", 0)
		inst.rt.Cleanup(context.Background(), h)
		return nil, nil, fmt.Errorf("record the start and runtime handle: %w", err)
	}
	close(recorded)
	log.Debug("started", "addr", h.Addr)
	return h, rd, nil
}

// supervise watches a ready backend until it exits or must stop.
func (m *Manager) supervise(ctx context.Context, inst *instance, b *berth.Backend, h *runtime.Handle, exitC chan runtime.Exit, log *slog.Logger) {
	maxIdle := b.Spawn.MaxIdle()
	var idle *time.Timer
	var idleC <-chan time.Time
	if maxIdle > 0 {
		idle = time.NewTimer(maxIdle)
		defer idle.Stop()
		idleC = idle.C
	}
	// isIdle reports whether the backend has been idle for maxIdle, and
	// otherwise points the timer at the next moment it could be.
	isIdle := func() bool {
		if inst.active.Load() > 0 {
			idle.Reset(maxIdle)
			return false
		}
		left := maxIdle - time.Duration(monoNow()-inst.lastActive.Load())
		if left <= 0 {
			return true
		}
		idle.Reset(left)
		return false
	}
	life := lifetimeC(b)
	for {
		select {
		case e := <-exitC:
			m.exited(inst, h, e, log)
			return
		case <-inst.stopC:
			why, hard := inst.stopRequest()
			m.stopAndTerminate(inst, h, exitC, why, hard, "", log)
			return
		case <-idleC:
			if isIdle() {
				if b.Spawn.Freezes() { // frozen, not stopped (freeze.go)
					end := m.freezeIdle(ctx, inst, h, exitC, life, log)
					switch {
					case end.thawed:
						idle.Reset(maxIdle)
						continue
					case end.exit != nil:
						m.exited(inst, h, *end.exit, log)
					default:
						m.stopAndTerminate(inst, h, exitC, end.why, end.hard, end.cause, log)
					}
					return
				}
				log.Info("idle", "after", maxIdle)
				m.stopAndTerminate(inst, h, exitC, berth.ReasonIdle, false, "", log)
				return
			}
		case <-life:
			m.stopAndTerminate(inst, h, exitC, berth.ReasonLifetime, false, "", log)
			return
		}
	}
}

// lifetimeC fires when the backend reaches its lifetime, measured from its
// creation; nil (never) when unbounded.
func lifetimeC(b *berth.Backend) <-chan time.Time {
	if b.Spawn.Lifetime() <= 0 {
		return nil
	}
	return time.After(time.Until(b.CreatedAt.Add(b.Spawn.Lifetime())))
}

// exited handles a backend that ended on its own.
func (m *Manager) exited(inst *instance, h *runtime.Handle, e runtime.Exit, log *slog.Logger) {
	why := berth.ReasonExited
	if e.Code != 0 || e.Signal != "" || e.OOMKilled {
		why = berth.ReasonCrashed
	}
	if errors.Is(e.Err, runtime.ErrLost) { // evicted, or its node was lost
		why = berth.ReasonLost
	}
	msg := exitMessage(e)
	log.Info("backend exited", "code", e.Code, "signal", e.Signal)
	m.transition(inst, store.Transition{To: berth.StateTerminating, Reason: why, Message: msg})
	m.afterExit(inst)
	inst.rt.Cleanup(context.Background(), h) // terminated means nothing is left of it
	m.terminate(inst, why, exitCode(e), msg)
}

// stopAndTerminate stops a running backend and records its end. cause, when
// set, is what the history says about why: the stopped program's own exit
// (killed by the stop signal) would only hide it.
func (m *Manager) stopAndTerminate(inst *instance, h *runtime.Handle, exitC chan runtime.Exit, why berth.Reason, hard bool, cause string, log *slog.Logger) {
	b := inst.snapshot()
	// Recorded beside the stop, not before it: a replica cut off from its
	// store must stop its backends before its lease can expire, however
	// long the store takes to answer.
	recorded := make(chan struct{})
	go func() {
		defer close(recorded)
		m.transition(inst, store.Transition{To: berth.StateTerminating, Reason: why, Message: cause})
	}()
	grace := b.Spawn.Grace()
	if hard {
		grace = 0
	}
	// Stop in the background so a hard terminate can cut a graceful stop short.
	stopped := make(chan error, 1)
	go func() { stopped <- inst.rt.Stop(context.Background(), h, b.Spawn.StopSignal, grace) }()
	var e runtime.Exit
	for waiting := true; waiting; {
		select {
		case err := <-stopped:
			if err != nil {
				log.Error("stop failed", "err", err)
			}
			stopped = nil
		case e = <-exitC:
			waiting = false
		case <-inst.stopC:
			if _, hard := inst.stopRequest(); hard && grace > 0 {
				grace = 0
				go inst.rt.Stop(context.Background(), h, "", 0)
			}
		}
	}
	m.afterExit(inst)
	inst.rt.Cleanup(context.Background(), h) // terminated means nothing is left of it
	<-recorded
	m.terminate(inst, why, exitCode(e), cmp.Or(cause, exitMessage(e)))
}

// afterExit runs the state hook until it succeeds: the key stays held (the
// backend stays terminating) while its final state is not durable.
func (m *Manager) afterExit(inst *instance) {
	if m.cfg.State == nil {
		return
	}
	backoff := 200 * time.Millisecond
	for attempt := 1; ; attempt++ {
		// A replica that gave its backends up (cut off) bounds each attempt
		// by its kill deadline: past it the save would be refused anyway.
		ctx, cancel := context.Background(), func() {}
		if m.cluster != nil && m.cluster.cutOff.Load() {
			ctx, cancel = m.writeContext()
		}
		err := m.cfg.State.SaveFinal(ctx, inst.snapshot())
		cancel()
		if err == nil {
			return
		}
		if m.fenced() {
			// Another node may hold the key by now, with a larger fencing
			// token: this save would be refused, and the state is what the
			// backend saved last.
			m.log.Error("final state save failed and this node's lease has run out: giving it up", "backend", inst.id, "err", err)
			m.recordEvent(inst, fmt.Sprintf("final state save given up: this node lost its lease (%v)", err))
			return
		}
		m.log.Error("final state save failed; retrying", "backend", inst.id, "attempt", attempt, "err", err)
		m.cfg.Metrics.saveErrors.Inc()
		m.recordEvent(inst, fmt.Sprintf("final state save failed (attempt %d): %v; retrying in %s", attempt, err, backoff))
		time.Sleep(backoff)
		backoff = min(backoff*2, 30*time.Second)
	}
}

func exitCode(e runtime.Exit) *int {
	if e.Code < 0 || e.Err != nil {
		return nil
	}
	c := e.Code
	return &c
}

func exitMessage(e runtime.Exit) string {
	switch {
	case e.OOMKilled:
		return "killed: out of memory"
	case e.Signal != "":
		return "killed by " + e.Signal
	case e.Err != nil:
		return e.Err.Error()
	case e.Code >= 0:
		return "exit code " + strconv.Itoa(e.Code)
	}
	return ""
}

// transition moves the backend forward in the store and in memory, and tells
// subscribers. It reports whether the move happened.
func (m *Manager) transition(inst *instance, t store.Transition) bool {
	err := m.record(inst, t)
	if err != nil && !errors.Is(err, berth.ErrInvalidTransition) {
		m.log.Error("record state", "backend", inst.id, "to", t.To, "err", err)
	}
	return err == nil
}

// record is transition, returning the store's error.
func (m *Manager) record(inst *instance, t store.Transition) error {
	if t.At.IsZero() {
		t.At = time.Now().UTC()
	}
	ctx, cancel := m.writeContext()
	defer cancel()
	b, err := m.cfg.Store.Transition(ctx, inst.id, t)
	if err != nil {
		return err
	}
	inst.mu.Lock()
	inst.b.State, inst.b.Reason, inst.b.ExitCode = b.State, b.Reason, b.ExitCode
	inst.b.ReadyAt, inst.b.TerminatedAt = b.ReadyAt, b.TerminatedAt
	inst.mu.Unlock()
	m.publish(inst.id)
	return nil
}

// recordEvent notes something about a backend without changing its state.
func (m *Manager) recordEvent(inst *instance, msg string) {
	if r, ok := m.cfg.Store.(interface {
		AddEvent(ctx context.Context, id string, msg string) error
	}); ok {
		r.AddEvent(context.Background(), inst.id, msg)
		m.publish(inst.id)
	}
}

func (m *Manager) terminate(inst *instance, why berth.Reason, code *int, msg string) {
	m.transition(inst, store.Transition{To: berth.StateTerminated, Reason: why, ExitCode: code, Message: msg,
		LastActive: inst.snapshot().LastActiveAt})
	m.cfg.Metrics.terminations.WithLabelValues(string(why)).Inc()
}

// finish releases everything a backend held in memory.
func (m *Manager) finish(inst *instance) {
	inst.markReadyRecorded()
	m.forget(inst)
	m.cfg.Logs.Finish(inst.id)
	close(inst.done)
	m.publish(inst.id)
}

// writeContext bounds a lifecycle's write to the store (and a final
// save). A replica's must end by its hard-kill deadline: a start or a ready
// whose record waits longer would keep the backend from hearing the
// watchdog's stop until after the lease could have expired, and once the
// lease may have run out the write is of no use anyway.
func (m *Manager) writeContext() (context.Context, context.CancelFunc) {
	if cl := m.cluster; cl != nil {
		kill := time.Duration(cl.renewed.Load()) + cl.timing.TTL - cl.timing.KillBefore
		return context.WithTimeout(context.Background(), max(kill-time.Duration(monoNow()), 0))
	}
	return context.WithTimeout(context.Background(), 30*time.Second)
}
