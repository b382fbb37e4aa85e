package server

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/lease"
	"github.com/berthhq/berth/proxy"
	"github.com/berthhq/berth/store"
)

// Cluster makes a Manager one replica among several that share a store
// (PostgreSQL). Each registers as a node, holds its backends' keys by
// renewing a lease judged by the database's clock, stops its backends by
// its own monotonic clock before that lease can expire, routes requests
// for backends other nodes run to their proxies, and hears about every
// backend's changes through the store's feed (docs/DESIGN.md, "Replicas").
type Cluster struct {
	// ProxyAddr is the host:port of this node's proxy as the other nodes
	// reach it; APIAddr its control API's.
	ProxyAddr string
	APIAddr   string
	// Capacity caps this node's live backends; 0 means no cap.
	Capacity int
	// LeaseTTL is the lease's length; 0 means lease.TTL. The rest of the
	// schedule scales with it (lease.Scaled).
	LeaseTTL time.Duration
	// OnRenew, if set, is called after each renewal that succeeded (the
	// docker reaper hears of it).
	OnRenew func()
}

// cluster is a Manager's state as a replica.
type cluster struct {
	cfg    Cluster
	timing lease.Timing

	renewed    atomic.Int64 // monoNow before the last successful renewal was sent
	cutOff     atomic.Bool  // past Stop since then: the node gave its backends up
	reconciled atomic.Bool  // Reconcile is done: tidyOwn may judge records
	mu         sync.Mutex
	nodes      map[string]*store.Node // as last read
	remote     map[string]remoteRoute // routes to backends other nodes run, by id
	holders    map[string]heldRemote  // other nodes' live backends, by key
	beats      map[string]beat        // when each node's heartbeat last moved
}

// beat is a node's last heartbeat as read from the store (the database's
// clock), and when this node saw it change (its own monotonic clock):
// placement judges other nodes alive by whether their heartbeat moves, never
// by comparing clocks.
type beat struct {
	at   time.Time
	seen int64
}

// heldRemote is a key's holder on another node, as last learned; like a
// route, it is asked of the store again after remoteRouteTTL, in case the
// feed's word of its end raced the read that cached it.
type heldRemote struct {
	b  *berth.Backend
	at int64 // monoNow when cached
}

type remoteRoute struct {
	route proxy.Route
	at    int64 // monoNow when looked up
}

// remoteRouteTTL is how long a route to another node's backend is used
// before the store is asked again. A stale one costs nothing wrong: that
// node's proxy answers 410 for a backend that has gone.
const remoteRouteTTL = 5 * time.Second

// remoteHard marks a hard terminate asked on a node that does not run the
// backend: it travels in the terminating event's message.
const remoteHard = "terminate requested (hard)"

// Join registers this Manager as a node of the cluster and starts renewing
// its lease and expiring dead nodes' leases. Call it before Reconcile: a
// node whose lease expired while it was down finds its backends recorded
// lost (RegisterNode), and Reconcile then stops what still runs of them
// rather than re-adopting backends whose keys others may hold. Reconcile
// then starts following the store's feed.
func (m *Manager) Join(ctx context.Context, c Cluster) error {
	cl := &cluster{cfg: c, timing: lease.Scaled(c.LeaseTTL), nodes: map[string]*store.Node{}, remote: map[string]remoteRoute{},
		holders: map[string]heldRemote{}, beats: map[string]beat{}}
	sent := monoNow()
	rctx, cancel := context.WithTimeout(ctx, cl.timing.TTL)
	defer cancel()
	if _, err := m.cfg.Store.RegisterNode(rctx, m.node(cl), cl.timing.TTL); err != nil {
		return fmt.Errorf("register node %s: %w", m.cfg.Node, err)
	}
	cl.renewed.Store(sent)
	m.cluster = cl
	m.refreshNodes(ctx)
	m.sweeper.Add(2)
	go func() { defer m.sweeper.Done(); m.renewLoop() }()
	go func() { defer m.sweeper.Done(); m.watchdog() }()
	return nil
}

// followStore starts following the store's feed, then picks up what was
// placed here before.
func (m *Manager) followStore(ctx context.Context) error {
	feed, err := m.cfg.Store.Watch(m.ctx)
	if err != nil {
		return fmt.Errorf("follow the store's changes: %w", err)
	}
	m.sweeper.Add(1)
	go func() { defer m.sweeper.Done(); m.follow(feed) }()
	m.pickUp(ctx)
	m.cluster.reconciled.Store(true)
	return nil
}

func (m *Manager) node(cl *cluster) *store.Node {
	names := make([]string, 0, len(m.cfg.Runtimes))
	for name := range m.cfg.Runtimes {
		names = append(names, name)
	}
	slices.Sort(names)
	return &store.Node{ID: m.cfg.Node, ProxyAddr: cl.cfg.ProxyAddr, APIAddr: cl.cfg.APIAddr,
		Runtimes: names, Capacity: cl.cfg.Capacity}
}

// renewLoop renews the lease, expires other nodes' leases, and re-reads
// the nodes.
func (m *Manager) renewLoop() {
	cl := m.cluster
	t := time.NewTicker(cl.timing.RenewInterval)
	defer t.Stop()
	for {
		select {
		case <-m.ctx.Done():
			return
		case <-t.C:
		}
		sent := monoNow()
		ctx, cancel := context.WithTimeout(m.ctx, cl.timing.RenewInterval)
		_, err := m.cfg.Store.RenewLease(ctx, m.cfg.Node, cl.timing.TTL)
		cancel()
		m.cfg.Metrics.leaseRenew(time.Duration(monoNow()-sent), err)
		switch {
		case err == nil:
			cl.renewed.Store(sent)
			if cl.cfg.OnRenew != nil {
				cl.cfg.OnRenew()
			}
			if cl.cutOff.CompareAndSwap(true, false) {
				m.log.Info("lease renewed: this node serves again")
			}
		case errors.Is(err, berth.ErrLeaseExpired):
			m.rejoin(cl)
			continue
		default:
			m.log.Warn("lease renewal failed", "err", err,
				"since_renewed", time.Duration(monoNow()-cl.renewed.Load()).Round(time.Millisecond))
			continue
		}
		ctx, cancel = context.WithTimeout(m.ctx, cl.timing.RenewInterval)
		moved, err := m.cfg.Store.ExpireNodes(ctx)
		cancel()
		if err != nil {
			m.log.Warn("expire dead nodes", "err", err)
		}
		for _, b := range moved {
			m.log.Warn("backend lost with its node", "backend", b.ID, "node", b.Node)
			m.publish(b.ID)
		}
		ctx, cancel = context.WithTimeout(m.ctx, cl.timing.RenewInterval)
		m.refreshNodes(ctx)
		if cl.reconciled.Load() {
			m.tidyOwn(ctx)
		}
		cancel()
	}
}

// tidyOwn squares this node's records with what it runs, every renewal:
// it picks up what was placed here (the feed's notice may have been
// missed, or its query failed), and ends records that say live although
// nothing of theirs runs here any more — a backend given up while the node
// was cut off, whose end could not be written then, or one terminated
// through another node before this one picked it up. Records Reconcile is
// still stopping (terminating, lost) are its own.
func (m *Manager) tidyOwn(ctx context.Context) {
	bs, err := m.cfg.Store.Backends(ctx, store.Filter{Node: m.cfg.Node, Live: true})
	if err != nil {
		return
	}
	for _, b := range bs {
		m.mu.Lock()
		known := m.live[b.ID] != nil || m.creating[b.ID]
		m.mu.Unlock()
		if known || b.State == berth.StateScheduled || (b.State == berth.StateTerminating && b.Reason == berth.ReasonLost) {
			continue
		}
		why, msg := berth.ReasonLost, "nothing of it runs on node "+m.cfg.Node+" any more (its end was not recorded when it stopped, as when the node was cut off from the store)"
		if b.State == berth.StateTerminating {
			why, msg = b.Reason, "ended on node "+m.cfg.Node+", which had not started it or had stopped it"
		}
		m.log.Warn("recording the end of a backend this node no longer runs", "backend", b.ID, "state", b.State)
		m.transition(newInstance(b, nil), store.Transition{To: berth.StateTerminated, Reason: why, Message: msg})
	}
	m.pickUp(ctx)
}

// rejoin registers again after the lease expired: the database has by
// then (or does now, in RegisterNode) recorded this node's backends lost,
// and the watchdog has stopped them.
func (m *Manager) rejoin(cl *cluster) {
	m.log.Error("this node's lease expired; its backends are lost; registering again")
	m.giveUp(true)
	sent := monoNow()
	ctx, cancel := context.WithTimeout(m.ctx, cl.timing.RenewInterval)
	defer cancel()
	if _, err := m.cfg.Store.RegisterNode(ctx, m.node(cl), cl.timing.TTL); err != nil {
		m.log.Warn("register again", "err", err)
		return
	}
	cl.renewed.Store(sent)
	cl.cutOff.Store(false)
}

// watchdog stops every backend once the lease may be about to expire
// without this node having renewed it: gracefully StopBefore its earliest
// expiry, hard KillBefore it, counted from before the last renewal that
// succeeded (lease.Timing.Deadlines, on the monotonic clock). The database
// dates the expiry from its own clock when it commits that renewal, later
// than this node sent it: the node's deadlines come first.
func (m *Manager) watchdog() {
	cl := m.cluster
	t := time.NewTicker(min(cl.timing.RenewInterval/4, 250*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-m.ctx.Done():
			return
		case <-t.C:
		}
		since := time.Duration(monoNow() - cl.renewed.Load())
		switch {
		case since >= cl.timing.TTL-cl.timing.KillBefore:
			m.giveUp(true)
		case since >= cl.timing.TTL-cl.timing.StopBefore:
			if cl.cutOff.CompareAndSwap(false, true) {
				m.log.Error("cut off from the store: stopping every backend before this node's lease can expire",
					"since_renewed", since.Round(time.Millisecond), "lease", cl.timing.TTL)
			}
			m.giveUp(false)
		}
	}
}

// giveUp asks every live backend to stop, as lost.
func (m *Manager) giveUp(hard bool) {
	m.mu.Lock()
	insts := make([]*instance, 0, len(m.live))
	for _, inst := range m.live {
		insts = append(insts, inst)
	}
	m.mu.Unlock()
	for _, inst := range insts {
		if r, h := inst.stopRequest(); r != berth.ReasonLost || (hard && !h) {
			inst.requestStop(berth.ReasonLost, hard)
		}
	}
}

// fenced reports whether this node may have lost its lease: what it would
// write now (a final save) may be refused, and must not be waited for.
func (m *Manager) fenced() bool {
	cl := m.cluster
	return cl != nil && time.Duration(monoNow()-cl.renewed.Load()) >= cl.timing.TTL
}

// Healthy reports why this node should not get traffic, if it should not:
// a replica cut off from the store stops its backends and starts none.
func (m *Manager) Healthy() error {
	cl := m.cluster
	if cl == nil {
		return nil
	}
	if since := time.Duration(monoNow() - cl.renewed.Load()); since > 2*cl.timing.RenewInterval+time.Second {
		return fmt.Errorf("the store has not renewed this node's lease for %s", since.Round(time.Second))
	}
	return nil
}

func (m *Manager) refreshNodes(ctx context.Context) {
	ns, err := m.cfg.Store.Nodes(ctx)
	if err != nil {
		m.log.Warn("read nodes", "err", err)
		return
	}
	cl := m.cluster
	now := monoNow()
	cl.mu.Lock()
	clear(cl.nodes)
	for _, n := range ns {
		cl.nodes[n.ID] = n
		if b, ok := cl.beats[n.ID]; !ok || !b.at.Equal(n.HeartbeatAt) {
			cl.beats[n.ID] = beat{at: n.HeartbeatAt, seen: now}
		}
	}
	cl.mu.Unlock()
}

// Nodes lists the cluster's nodes (none for a Manager that is no replica).
func (m *Manager) Nodes(ctx context.Context) ([]*store.Node, error) {
	if m.cluster == nil {
		return nil, nil
	}
	return m.cfg.Store.Nodes(ctx)
}

// SetDrained drains a node (no new backends there) or undrains it.
func (m *Manager) SetDrained(ctx context.Context, id string, drained bool) error {
	if m.cluster == nil {
		return fmt.Errorf("this Berth is not a replica (its store is not shared): %w", berth.ErrNotFound)
	}
	if err := m.cfg.Store.SetDrained(ctx, id, drained); err != nil {
		return err
	}
	m.refreshNodes(ctx)
	return nil
}

// place chooses the node for a new backend that needs runtime: this one
// while it can take it (and runs it: here says so), else the less loaded
// of two live nodes drawn at random among those that can (the "power of
// two choices": close to the least loaded, without every replica herding
// onto the same one).
func (m *Manager) place(runtime string, here bool) (string, error) {
	cl := m.cluster
	live := m.LiveCount() // m.mu before cl.mu, never the other way
	cl.mu.Lock()
	defer cl.mu.Unlock()
	fits := func(n *store.Node) bool {
		return n != nil && !n.Drained && slices.Contains(n.Runtimes, runtime) &&
			(n.Capacity == 0 || n.Live < n.Capacity) &&
			time.Duration(monoNow()-cl.beats[n.ID].seen) < cl.timing.TTL // its heartbeat moves
	}
	self := cl.nodes[m.cfg.Node]
	if self != nil {
		s := *self
		s.Live = live // this node knows its own count better than its last read
		self = &s
	}
	if here && !cl.cutOff.Load() && (fits(self) || self == nil) {
		m.cfg.Metrics.placed("local")
		return m.cfg.Node, nil
	}
	var cands []*store.Node
	for _, n := range cl.nodes {
		if n.ID != m.cfg.Node && fits(n) {
			cands = append(cands, n)
		}
	}
	if len(cands) == 0 {
		m.cfg.Metrics.placed("none")
		return "", fmt.Errorf("no node can run it (drained, full, or without the %s runtime): %w", runtime, errNoNode)
	}
	a := cands[rand.IntN(len(cands))]
	if b := cands[rand.IntN(len(cands))]; b.Live < a.Live {
		a = b
	}
	a.Live++ // until the next read, count what this node sent there
	m.cfg.Metrics.placed("remote")
	return a.ID, nil
}

var errNoNode = errors.New("no node available")

// runtimes names the runtimes that live nodes other than self run, as
// they registered them: a spawn that this node cannot run may be placed
// on one of them. A drained or full node still counts (it may take the
// spawn later; place says why it cannot now), a dead one does not.
func (cl *cluster) runtimes(self string) []string {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	var names []string
	for _, n := range cl.nodes {
		if n.ID == self || time.Duration(monoNow()-cl.beats[n.ID].seen) >= cl.timing.TTL {
			continue
		}
		for _, r := range n.Runtimes {
			if !slices.Contains(names, r) {
				names = append(names, r)
			}
		}
	}
	return names
}

// follow reads the store's feed: it wakes waiters and event streams for
// every backend, picks up backends placed here, and stops the ones whose
// terminate was asked through another node.
func (m *Manager) follow(feed <-chan store.Change) {
	for ch := range feed {
		if ch.Resync {
			m.forgetHolders()
			m.pickUp(m.ctx)
			m.hub.publishAll()
			continue
		}
		m.holderChanged(ch)
		m.publish(ch.BackendID)
		if ch.Node != m.cfg.Node {
			if ch.State == berth.StateTerminated {
				m.forgetRemote(ch.BackendID)
			}
			continue
		}
		switch ch.State {
		case berth.StateScheduled:
			m.mu.Lock()
			known := m.live[ch.BackendID] != nil || m.creating[ch.BackendID]
			m.mu.Unlock()
			if !known { // not this node's own spawn
				m.pickUp(m.ctx)
			}
		case berth.StateTerminating:
			m.stopAsked(ch.BackendID)
		}
	}
}

// pickUp starts the backends other nodes placed here that this node does
// not run yet.
func (m *Manager) pickUp(ctx context.Context) {
	bs, err := m.cfg.Store.Backends(ctx, store.Filter{Node: m.cfg.Node, State: berth.StateScheduled})
	if err != nil {
		m.log.Warn("look for backends placed here", "err", err)
		return
	}
	for _, b := range bs {
		rt := m.cfg.Runtimes[b.Runtime]
		m.mu.Lock()
		known := m.live[b.ID] != nil || m.creating[b.ID] || m.closing
		if !known && rt != nil {
			inst := newInstance(b, rt)
			m.live[inst.id] = inst
			if inst.key != "" {
				m.byKey[inst.key] = inst
			}
			m.mu.Unlock()
			m.wg.Add(1)
			go func() {
				defer m.wg.Done()
				m.run(inst, nil)
			}()
			continue
		}
		m.mu.Unlock()
		if !known {
			m.transition(newInstance(b, nil), store.Transition{To: berth.StateTerminated, Reason: berth.ReasonSpawnFailed,
				Message: "placed on node " + m.cfg.Node + ", which has no " + b.Runtime + " runtime"})
		}
	}
}

// stopAsked stops a backend of this node's that another node recorded
// terminating on a user's request.
func (m *Manager) stopAsked(id string) {
	m.mu.Lock()
	inst := m.live[id]
	m.mu.Unlock()
	if inst == nil {
		return
	}
	if why, _ := inst.stopRequest(); why != "" {
		return
	}
	hard := false
	if evs, err := m.cfg.Store.Events(m.ctx, id, 0); err == nil && len(evs) > 0 {
		hard = evs[len(evs)-1].Message == remoteHard
	}
	inst.requestStop(berth.ReasonRequested, hard)
}

// terminateRemote records a terminate asked here for a backend another
// node runs; that node stops it when the change reaches it.
func (m *Manager) terminateRemote(ctx context.Context, b *berth.Backend, hard bool) error {
	msg := "terminate requested"
	if hard {
		msg = remoteHard
	}
	_, err := m.cfg.Store.Transition(ctx, b.ID, store.Transition{To: berth.StateTerminating, Reason: berth.ReasonRequested, Message: msg})
	if errors.Is(err, berth.ErrInvalidTransition) {
		return nil // terminating or gone already
	}
	return err
}

// resolveRemote is the route to a live backend another node runs: that
// node's proxy.
func (m *Manager) resolveRemote(ctx context.Context, b *berth.Backend) (proxy.Route, bool) {
	cl := m.cluster
	cl.mu.Lock()
	n := cl.nodes[b.Node]
	cl.mu.Unlock()
	if n == nil {
		m.refreshNodes(ctx)
		cl.mu.Lock()
		n = cl.nodes[b.Node]
		cl.mu.Unlock()
	}
	if n == nil || n.ProxyAddr == "" {
		return proxy.Route{}, false
	}
	r := proxy.Route{BackendID: b.ID, Addr: n.ProxyAddr, Peer: true}
	cl.mu.Lock()
	if len(cl.remote) >= maxRemoteRoutes {
		clear(cl.remote)
	}
	cl.remote[b.ID] = remoteRoute{route: r, at: monoNow()}
	cl.mu.Unlock()
	return r, true
}

// maxRemoteRoutes bounds the routes to other nodes' backends kept.
const maxRemoteRoutes = 1 << 16

func (m *Manager) cachedRemote(id string) (proxy.Route, bool) {
	cl := m.cluster
	if cl == nil {
		return proxy.Route{}, false
	}
	cl.mu.Lock()
	r, ok := cl.remote[id]
	cl.mu.Unlock()
	if !ok || time.Duration(monoNow()-r.at) > remoteRouteTTL {
		return proxy.Route{}, false
	}
	return r.route, true
}

func (m *Manager) forgetRemote(id string) {
	cl := m.cluster
	cl.mu.Lock()
	delete(cl.remote, id)
	cl.mu.Unlock()
}

// waitRemote waits until a backend another node runs is ready or has
// ended, or ctx is done, and returns its record.
func (m *Manager) waitRemote(ctx context.Context, id string) (*berth.Backend, error) {
	changed, unsubscribe := m.hub.subscribe(id)
	defer unsubscribe()
	for {
		b, err := m.cfg.Store.Backend(ctx, id)
		if err != nil || b.State == berth.StateReady || !b.State.Live() {
			return b, err
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return b, nil
		}
	}
}

// publishAll wakes every subscriber: after a gap in the store's feed, any
// backend may have changed.
func (h *hub) publishAll() {
	h.mu.Lock()
	ids := make([]string, 0, len(h.topics))
	for id := range h.topics {
		ids = append(ids, id)
	}
	h.mu.Unlock()
	for _, id := range ids {
		h.publish(id)
	}
}

// A connect for a key another node holds answers from memory: the holders
// this node learned (from the store, when it first asked) are kept up to
// date by the feed, and forgotten when they end or the feed had a gap. A
// connect that finds none asks the store, as a first connect does.

func (m *Manager) cachedHolder(key string) *berth.Backend {
	cl := m.cluster
	if cl == nil {
		return nil
	}
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if h, ok := cl.holders[key]; ok && time.Duration(monoNow()-h.at) < remoteRouteTTL {
		c := *h.b
		return &c
	}
	return nil
}

func (m *Manager) cacheHolder(b *berth.Backend) {
	cl := m.cluster
	if cl == nil || b.Key == "" || b.Node == m.cfg.Node || !b.State.Live() {
		return
	}
	c := *b
	cl.mu.Lock()
	if len(cl.holders) >= maxRemoteRoutes {
		clear(cl.holders)
	}
	cl.holders[b.Key] = heldRemote{b: &c, at: monoNow()}
	cl.mu.Unlock()
}

// holderChanged applies a change to the holder kept for its key.
func (m *Manager) holderChanged(ch store.Change) {
	cl := m.cluster
	cl.mu.Lock()
	defer cl.mu.Unlock()
	h, ok := cl.holders[ch.Key]
	b := h.b
	switch {
	case !ok:
	case b.ID != ch.BackendID:
		delete(cl.holders, ch.Key) // another backend holds the key now
	case ch.State == berth.StateTerminating || ch.State == berth.StateTerminated:
		delete(cl.holders, ch.Key)
	case ch.State != "":
		b.State = ch.State
	}
}

// forgetHolder drops b as its key's holder, once it is known to have ended.
func (m *Manager) forgetHolder(b *berth.Backend) {
	cl := m.cluster
	if cl == nil {
		return
	}
	cl.mu.Lock()
	if h, ok := cl.holders[b.Key]; ok && h.b.ID == b.ID {
		delete(cl.holders, b.Key)
	}
	cl.mu.Unlock()
}

func (m *Manager) forgetHolders() {
	cl := m.cluster
	cl.mu.Lock()
	clear(cl.holders)
	cl.mu.Unlock()
}
