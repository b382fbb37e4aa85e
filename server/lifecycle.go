package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	goruntime "runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/runtime"
	"github.com/berthhq/berth/store"
)

// epoch anchors monotonic activity times: wall clocks may jump, idle
// deadlines must not.
var epoch = time.Now()

func monoNow() int64 { return int64(time.Since(epoch)) }

// instance is the in-memory half of a live backend. Its lifecycle goroutine
// (Manager.run) is the only writer of its state.
type instance struct {
	id, key string
	rt      runtime.Runtime

	// answered is closed once the backend first answered its readiness
	// probe (the proxy routes to it from then on, before ready is
	// recorded) or ended. readyRecorded is closed once the store says
	// ready, or the backend ended: connects that wait for ready return a
	// backend whose record says so.
	answered      chan struct{}
	readyRecorded chan struct{}
	done          chan struct{} // closed once terminated
	stopC         chan struct{} // signalled by requestStop

	active     atomic.Int64 // open requests and WebSockets
	lastActive atomic.Int64 // monoNow() of the last activity
	waiting    atomic.Int64 // proxied GETs and HEADs waiting for answered

	mu         sync.Mutex
	b          *berth.Backend
	addr       string
	stopWhy    berth.Reason
	stopHard   bool
	readyOnce  sync.Once
	answerOnce sync.Once
}

func newInstance(b *berth.Backend, rt runtime.Runtime) *instance {
	inst := &instance{
		id:            b.ID,
		key:           b.Key,
		rt:            rt,
		b:             b,
		answered:      make(chan struct{}),
		readyRecorded: make(chan struct{}),
		done:          make(chan struct{}),
		stopC:         make(chan struct{}, 1),
	}
	inst.lastActive.Store(monoNow())
	return inst
}

// Begin and End implement proxy.Activity: every request and every open
// WebSocket keeps the backend from going idle.
func (i *instance) Begin() {
	i.active.Add(1)
	i.lastActive.Store(monoNow())
}

func (i *instance) End() {
	i.lastActive.Store(monoNow())
	i.active.Add(-1)
}

func (i *instance) snapshot() *berth.Backend {
	i.mu.Lock()
	b := *i.b
	i.mu.Unlock()
	if b.State.Live() {
		at := time.Now().Add(-time.Duration(monoNow() - i.lastActive.Load())).UTC()
		b.LastActiveAt = &at
	}
	return &b
}

func (i *instance) state() berth.State {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.b.State
}

func (i *instance) terminating() bool {
	s := i.state()
	return s == berth.StateTerminating || s == berth.StateTerminated
}

// markAnswered lets the proxy send traffic to the backend.
func (i *instance) markAnswered() { i.answerOnce.Do(func() { close(i.answered) }) }

// markReadyRecorded releases connects waiting for ready (and marks the
// backend answered, if that has not happened yet).
func (i *instance) markReadyRecorded() {
	i.markAnswered()
	i.readyOnce.Do(func() { close(i.readyRecorded) })
}

// requestStop asks the lifecycle to stop the backend. The first reason wins;
// a later hard request still upgrades a graceful stop to a kill.
func (i *instance) requestStop(why berth.Reason, hard bool) {
	i.mu.Lock()
	if i.stopWhy == "" {
		i.stopWhy = why
	}
	if hard {
		i.stopHard = true
	}
	i.mu.Unlock()
	select {
	case i.stopC <- struct{}{}:
	default:
	}
}

func (i *instance) stopRequest() (berth.Reason, bool) {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.stopWhy, i.stopHard
}

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

	var h *runtime.Handle
	if rec != nil {
		h = rec.handle
	} else {
		var err error
		h, err = m.start(ctx, inst, b, log)
		if err != nil {
			log.Warn("spawn failed", "err", err)
			m.terminate(inst, berth.ReasonSpawnFailed, nil, err.Error())
			return
		}
	}
	inst.mu.Lock()
	inst.addr = h.Addr
	inst.mu.Unlock()

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
		if !m.awaitReady(ctx, inst, b, h, exitC, log) {
			return
		}
	} else {
		inst.markReadyRecorded()
	}
	m.supervise(ctx, inst, b, h, exitC, log)
}

// start builds the runtime spec and starts the backend.
func (m *Manager) start(ctx context.Context, inst *instance, b *berth.Backend, log *slog.Logger) (*runtime.Handle, error) {
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
	if inst.rt.Name() == "process" && m.cfg.FreePort != nil {
		p, err := m.cfg.FreePort()
		if err != nil {
			return nil, fmt.Errorf("pick a port: %w", err)
		}
		spec.Port = p
	}
	spec.Env["PORT"] = strconv.Itoa(spec.Port)
	spec.Env["BERTH_BACKEND_ID"] = b.ID
	spec.Env["BERTH_KEY"] = b.Key
	spec.Env["BERTH_SECRET"] = b.Secret
	spec.Env["BERTH_FENCING_TOKEN"] = strconv.FormatInt(b.FencingToken, 10)
	m.cfg.Logs.Open(b.ID)
	spec.Logs = m.cfg.Logs.Writer(b.ID)
	if m.cfg.State != nil {
		if err := m.cfg.State.Prepare(ctx, b, &spec); err != nil {
			return nil, fmt.Errorf("prepare state: %w", err)
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
		return nil, err
	}
	if err := m.record(inst, store.Transition{To: berth.StateStarting, At: at, Handle: encodeHandle(h)}); err != nil {
		// Without a persisted handle a restarted Berth could not find this
		// backend again, so do not let it run.
		inst.rt.Stop(context.Background(), h, "", 0)
		inst.rt.Cleanup(context.Background(), h)
		return nil, fmt.Errorf("record the start and runtime handle: %w", err)
	}
	log.Debug("started", "addr", h.Addr)
	return h, nil
}

// awaitReady waits for the backend to answer HTTP. It returns false when the
// backend ended instead (already driven to terminated).
func (m *Manager) awaitReady(ctx context.Context, inst *instance, b *berth.Backend, h *runtime.Handle, exitC chan runtime.Exit, log *slog.Logger) bool {
	started := time.Now()
	rctx, cancel := context.WithTimeout(ctx, b.Spawn.StartupTimeout())
	defer cancel()
	readyC := make(chan error, 1)
	var readyAt time.Time
	m.starting.Add(1)
	go func() {
		defer m.starting.Add(-1)
		err := pollReady(rctx, h.Addr, m.pollInterval, m.probeConnReuser(inst))
		if err == nil && testHookAnswered != nil {
			testHookAnswered(inst)
		}
		if err == nil {
			// The backend answers: route to it at once, from here, and let
			// the requests that were waiting for it go out before this
			// goroutine or the one recording ready takes the CPU back.
			// ready is recorded after; a crash in between leaves the
			// backend starting with a live handle, which Reconcile
			// re-adopts and polls again.
			readyAt = time.Now().UTC()
			inst.lastActive.Store(monoNow())
			inst.markAnswered()
			goruntime.Gosched()
		}
		readyC <- err
	}()

	ready := func() {
		m.transition(inst, store.Transition{To: berth.StateReady, At: readyAt})
		inst.markReadyRecorded()
		m.cfg.Metrics.startup.Observe(time.Since(started).Seconds())
	}
	// A backend the probe found answering may already be routed to, have
	// served requests and been told to stop by a client that saw them.
	// So after a stop or an exit the probe's answer is still awaited (once
	// cancelled it comes at once) and a yes is recorded as ready first:
	// the history never skips ready.
	readyIfAnswered := func() {
		if <-readyC == nil {
			ready()
		}
	}
	select {
	case err := <-readyC:
		if err != nil {
			if ctx.Err() != nil {
				return true // shutting down; supervise sees the stop
			}
			log.Warn("startup timeout", "after", b.Spawn.StartupTimeout())
			m.stopAndTerminate(inst, h, exitC, berth.ReasonStartupTimeout, false, log)
			return false
		}
		ready()
		return true
	case e := <-exitC:
		cancel()
		readyIfAnswered()
		m.exited(inst, h, e, log)
		return false
	case <-inst.stopC:
		cancel()
		readyIfAnswered()
		why, hard := inst.stopRequest()
		m.stopAndTerminate(inst, h, exitC, why, hard, log)
		return false
	}
}

// testHookAnswered, when set by a test, runs once a starting backend has
// answered its probe, before the route opens.
var testHookAnswered func(*instance)

// probeConnReuser returns what takes inst's readiness probe's connection: the proxy gets
// the answered connection only while a request it can carry (a plain GET
// or HEAD, proxy.Pooled) waits for the backend, so a backend that no such
// request waits for leaves no idle connection behind.
func (m *Manager) probeConnReuser(inst *instance) ProbeConnReuser {
	keep := m.cfg.ReuseProbeConn
	if keep == nil {
		return nil
	}
	return func(addr string, c net.Conn, br *bufio.Reader) {
		if inst.waiting.Load() == 0 {
			c.Close()
			return
		}
		keep(addr, c, br)
	}
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
			m.stopAndTerminate(inst, h, exitC, why, hard, log)
			return
		case <-idleC:
			if isIdle() {
				log.Info("idle", "after", maxIdle)
				m.stopAndTerminate(inst, h, exitC, berth.ReasonIdle, false, log)
				return
			}
		case <-life:
			m.stopAndTerminate(inst, h, exitC, berth.ReasonLifetime, false, log)
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
	msg := exitMessage(e)
	log.Info("backend exited", "code", e.Code, "signal", e.Signal)
	m.transition(inst, store.Transition{To: berth.StateTerminating, Reason: why, Message: msg})
	m.afterExit(inst)
	inst.rt.Cleanup(context.Background(), h) // terminated means nothing is left of it
	m.terminate(inst, why, exitCode(e), msg)
}

// stopAndTerminate stops a running backend and records its end.
func (m *Manager) stopAndTerminate(inst *instance, h *runtime.Handle, exitC chan runtime.Exit, why berth.Reason, hard bool, log *slog.Logger) {
	b := inst.snapshot()
	m.transition(inst, store.Transition{To: berth.StateTerminating, Reason: why})
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
	m.terminate(inst, why, exitCode(e), exitMessage(e))
}

// afterExit runs the state hook until it succeeds: the key stays held (the
// backend stays terminating) while its final state is not durable.
func (m *Manager) afterExit(inst *instance) {
	if m.cfg.State == nil {
		return
	}
	backoff := 200 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := m.cfg.State.SaveFinal(context.Background(), inst.snapshot())
		if err == nil {
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
	b, err := m.cfg.Store.Transition(context.Background(), inst.id, t)
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
