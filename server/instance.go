package server

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/runtime"
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
	fz         freezeHold   // idle_action freeze (freeze.go)

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
	if i.fz.frozen.Load() { // after the Add: see freeze.go
		i.fz.requestThaw()
	}
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

// setAddr sets where the backend listens, before its route can open.
func (i *instance) setAddr(addr string) {
	i.mu.Lock()
	i.addr = addr
	i.mu.Unlock()
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
