package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
	"github.com/berthhq/berth/runtime"
	"github.com/berthhq/berth/store"
)

// Warm pools (DESIGN.md, "Warm pools"): a pool keeps min_ready backends of
// its template started and ready without a key. A connect for a key that
// has no backend claims one: the store gives it the key under the same
// fencing as a new backend's (store.Pools.ClaimBackend), Berth tells the
// backend who it now is (POST /.berth/claim) and routes to it only once it
// answered 2xx. A pooled backend is an ordinary backend otherwise: a record,
// a runtime handle, one lifecycle goroutine (Manager.run); an unclaimed one
// is kept from going idle by holding one "activity" open until its claim.
//
// Pools are per node: a replica keeps its own backends of every pool warm
// and claims only its own. Their definitions are shared through the store.

// pools is a Manager's warm pools. Its mu is never held while m.mu is
// wanted, nor the other way round.
type pools struct {
	m     *Manager
	store store.Pools
	kickC chan struct{}

	mu     sync.Mutex
	byName map[string]*pool
	conns  map[string]net.Conn // by backend id: a ready one's, for its claim (pool_claim.go)

	metrics *poolMetrics
}

// pool is one pool's definition and, on this node, its live backends.
type pool struct {
	def berth.Pool
	// ready are unclaimed and ready, oldest first; starting are unclaimed
	// and not yet ready; claimed were claimed and still run. An instance
	// is in exactly one of them from its start until it ends.
	ready    []*instance
	starting map[string]*instance
	claimed  map[string]*instance
	// failures counts pooled backends that ended before they were ready,
	// in a row; retryAt delays the next start after one (a template that
	// cannot start must not become a crash loop).
	failures int
	retryAt  time.Time
}

func (p *pool) live() int { return len(p.ready) + len(p.starting) + len(p.claimed) }

// refillDelay is how long after a claim its pool starts a replacement: a
// start (a fork, store writes) competes for the CPU with the claimed
// backend's first requests and with the other claims of a burst, which
// are what the pool is for.
const refillDelay = 50 * time.Millisecond

// reclaimWait bounds how long a restart waits for the repeated claims of
// the claimed backends it re-adopted before it serves.
const reclaimWait = 10 * time.Second

// poolTick is how often the pools are checked without a reason to.
const poolTick = time.Second

// StartPools loads the pools from the store, adds or replaces those in
// defs (the --pools file), takes back the pooled backends Reconcile
// re-adopted, and starts keeping the pools filled. Call it after
// Reconcile. A store without pools (not store.Pools) gets none.
func (m *Manager) StartPools(ctx context.Context, defs []berth.Pool) error {
	sp, ok := m.cfg.Store.(store.Pools)
	if !ok {
		if len(defs) > 0 {
			return errors.New("pools: this store does not keep pools")
		}
		return nil
	}
	ps := &pools{
		m: m, store: sp, kickC: make(chan struct{}, 1), byName: make(map[string]*pool),
		conns: make(map[string]net.Conn), metrics: newPoolMetrics(),
	}
	for i := range defs {
		d := defs[i]
		if err := d.Validate(); err != nil {
			return fmt.Errorf("pools: pool %q: %w", d.Name, err)
		}
		if _, _, err := m.runtimeFor(forPool(&d.Spawn)); err != nil {
			return fmt.Errorf("pools: pool %q: %w", d.Name, err)
		}
		if err := sp.PutPool(ctx, &d); err != nil {
			return fmt.Errorf("pools: %w", err)
		}
	}
	all, err := sp.Pools(ctx)
	if err != nil {
		return fmt.Errorf("pools: %w", err)
	}
	for _, d := range all {
		ps.byName[d.Name] = newPool(*d)
	}
	m.pools = ps
	// The repeated claims are awaited (for a while) before Berth serves,
	// so a key's first requests after a restart find a backend that
	// knows its key.
	reclaims := ps.readopt()
	done := make(chan struct{})
	go func() { reclaims.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(reclaimWait):
		m.log.Warn("pool: repeated claims still under way; serving anyway", "after", reclaimWait)
	case <-ctx.Done():
	}
	m.sweeper.Add(1)
	go func() {
		defer m.sweeper.Done()
		ps.keep()
	}()
	return nil
}

func newPool(def berth.Pool) *pool {
	return &pool{def: def, starting: make(map[string]*instance), claimed: make(map[string]*instance)}
}

// readopt takes back the live backends of pools that Reconcile re-adopted:
// unclaimed ones wait for a claim again (or stop, if their pool is gone or
// its template changed), claimed ones count against their pool's max.
func (ps *pools) readopt() (reclaims *sync.WaitGroup) {
	reclaims = new(sync.WaitGroup)
	m := ps.m
	m.mu.Lock()
	var insts []*instance
	for _, inst := range m.live {
		insts = append(insts, inst)
	}
	m.mu.Unlock()
	for _, inst := range insts {
		b := inst.snapshot()
		if b.Pool == "" || !b.State.Live() {
			continue
		}
		ps.mu.Lock()
		p := ps.byName[b.Pool]
		switch {
		case b.Key != "":
			if p != nil {
				p.claimed[inst.id] = inst
			}
			m.wg.Add(1)
			reclaims.Add(1)
			go func() {
				defer m.wg.Done()
				defer reclaims.Done()
				ps.reclaim(inst)
			}()
		case p == nil || !berth.SameSpawn(&p.def.Spawn, &b.Spawn) || b.State == berth.StateTerminating:
			inst.Begin() // never idle; stopped just below
			inst.requestStop(berth.ReasonRequested, false)
			p = nil
		default:
			inst.Begin()
			p.starting[inst.id] = inst
		}
		ps.mu.Unlock()
		if p != nil {
			m.wg.Add(1)
			go func() {
				defer m.wg.Done()
				ps.watch(p, inst)
			}()
		}
	}
	return reclaims
}

// reclaim repeats the claim of a claimed backend that a restarted Berth
// re-adopted: Berth may have died between recording the claim and the
// backend's answer, and a backend that already has its claim answers the
// same claim again with 2xx (sdk.ClaimHandler). One that refuses is
// stopped: it cannot know which key it serves.
func (ps *pools) reclaim(inst *instance) {
	select {
	case <-inst.readyRecorded:
	case <-inst.done:
		return
	}
	if inst.state() != berth.StateReady {
		return
	}
	if err := ps.m.deliverClaim(ps.m.ctx, inst, nil); err != nil {
		ps.m.log.Warn("pool: repeated claim of a re-adopted backend failed; stopping it", "backend", inst.id, "err", err)
		ps.m.recordEvent(inst, "repeated claim after a restart failed: "+err.Error())
		inst.requestStop(berth.ReasonSpawnFailed, false)
	}
}

// keep starts pooled backends while a pool has fewer than min_ready, until
// the Manager stops.
func (ps *pools) keep() {
	t := time.NewTicker(poolTick)
	defer t.Stop()
	for ticks := 0; ; {
		ps.fill()
		select {
		case <-ps.m.ctx.Done():
			return
		case <-ps.kickC:
		case <-t.C:
			if ticks++; ticks%syncEvery == 0 {
				ctx, cancel := context.WithTimeout(ps.m.ctx, 10*time.Second)
				if err := ps.sync(ctx); err != nil {
					ps.m.log.Warn("pool: read the pools' definitions", "err", err)
				}
				cancel()
			}
		}
	}
}

func (ps *pools) kick() {
	select {
	case ps.kickC <- struct{}{}:
	default:
	}
}

// fill starts what each pool lacks.
func (ps *pools) fill() {
	type start struct {
		p *pool
		n int
	}
	var (
		starts []start
		stop   []*instance
	)
	now := time.Now()
	caps := ps.m.runtimeCaps()
	ps.mu.Lock()
	for _, p := range ps.byName {
		if _, err := chooseRuntime(forPool(&p.def.Spawn), caps, nil); err != nil {
			// A replica without the template's runtime keeps none of
			// the pool warm: its connects spawn cold, placed on a node
			// that runs it.
			continue
		}
		target := p.def.MinReadyAt(now)
		if extra := len(p.ready) - target; extra > 0 {
			// A lower min_ready (or the end of a schedule's window): the
			// newest go, the oldest stay first in line for a claim.
			stop = append(stop, p.ready[len(p.ready)-extra:]...)
			p.ready = p.ready[:len(p.ready)-extra]
		}
		n := target - len(p.ready) - len(p.starting)
		if p.def.Max > 0 {
			n = min(n, p.def.Max-p.live())
		}
		if n > 0 && now.After(p.retryAt) {
			starts = append(starts, start{p, n})
		}
	}
	ps.mu.Unlock()
	ps.stopUnclaimed(stop)
	for _, s := range starts {
		for range s.n {
			if err := ps.startOne(s.p); err != nil {
				ps.m.log.Warn("pool: start a backend", "pool", s.p.def.Name, "err", err)
				ps.failed(s.p)
				break
			}
		}
	}
}

// forPool is a pool's template as its runtime is chosen: freezing asked
// of a runtime that cannot is no reason to refuse a pool (its claimed
// backends then stop when idle: docs/DESIGN.md, "Frozen backends").
func forPool(sc *berth.SpawnConfig) *berth.SpawnConfig {
	c := *sc
	c.IdleAction = ""
	return &c
}

// failed delays a pool's next start, doubling up to 30 s per failure in a
// row.
func (ps *pools) failed(p *pool) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	p.failures++
	p.retryAt = time.Now().Add(min(time.Duration(1<<min(p.failures, 6))*250*time.Millisecond, 30*time.Second))
}

// startOne records and starts one unclaimed backend of p, on this node.
func (ps *pools) startOne(p *pool) error {
	m := ps.m
	ps.mu.Lock()
	def := p.def
	current := ps.byName[def.Name] == p
	ps.mu.Unlock()
	if !current {
		return nil // deleted or replaced meanwhile
	}
	// Pools are per node: this node keeps its own warm, so it needs the
	// runtime itself (PutPool made sure some node runs it).
	name, err := chooseRuntime(forPool(&def.Spawn), m.runtimeCaps(), nil)
	if err != nil {
		return err
	}
	rt := m.cfg.Runtimes[name]
	b := &berth.Backend{
		ID:        newID(),
		User:      "",
		State:     berth.StateScheduled,
		Runtime:   rt.Name(),
		Spawn:     def.Spawn,
		Secret:    newSecret(),
		Node:      m.cfg.Node,
		Pool:      def.Name,
		CreatedAt: time.Now().UTC(),
	}
	m.mu.Lock()
	if m.closing {
		m.mu.Unlock()
		return nil
	}
	m.creating[b.ID] = true // a replica's pickUp must leave it alone
	m.mu.Unlock()
	ctx, cancel := m.writeContext()
	_, _, err = m.cfg.Store.CreateBackend(ctx, b)
	cancel()
	if err != nil {
		m.mu.Lock()
		delete(m.creating, b.ID)
		m.mu.Unlock()
		return fmt.Errorf("record backend: %w", err)
	}
	inst := newInstance(b, rt)
	inst.Begin() // an unclaimed backend is never idle
	m.mu.Lock()
	// Forgotten as being created only once it is live here, in the same
	// step: pickUp must never find it in neither.
	delete(m.creating, b.ID)
	if m.closing {
		// Shutdown listed what to stop before this was adopted: it must
		// not start now.
		m.mu.Unlock()
		m.transition(inst, store.Transition{To: berth.StateTerminated, Reason: berth.ReasonRequested,
			Message: "Berth shut down before the pool started it"})
		return nil
	}
	m.live[inst.id] = inst
	m.wg.Add(2)
	m.mu.Unlock()
	m.cfg.Metrics.spawns.Inc()
	ps.mu.Lock()
	p.starting[inst.id] = inst
	ps.mu.Unlock()
	m.publish(b.ID)
	go func() {
		defer m.wg.Done()
		m.run(inst, nil)
	}()
	go func() {
		defer m.wg.Done()
		ps.watch(p, inst)
	}()
	return nil
}

// watch moves inst from starting to ready once its record says so, and
// out of its pool once it ended, and has the pool refilled.
func (ps *pools) watch(p *pool, inst *instance) {
	select {
	case <-inst.readyRecorded:
	case <-inst.done:
	}
	if inst.state() == berth.StateReady {
		ps.predial(inst)
	}
	ps.mu.Lock()
	if _, ok := p.starting[inst.id]; ok && inst.state() == berth.StateReady {
		delete(p.starting, inst.id)
		p.ready = append(p.ready, inst)
		p.failures, p.retryAt = 0, time.Time{}
	}
	ps.mu.Unlock()
	<-inst.done
	if c := ps.takeConn(inst.id); c != nil {
		c.Close()
	}
	ps.mu.Lock()
	_, starting := p.starting[inst.id]
	delete(p.starting, inst.id)
	delete(p.claimed, inst.id)
	p.ready = slices.DeleteFunc(p.ready, func(i *instance) bool { return i == inst })
	ps.mu.Unlock()
	if starting && !ps.m.closingNow() {
		ps.failed(p) // it never became ready
	}
	ps.kick()
}

func (m *Manager) closingNow() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.closing
}

// take removes the oldest ready backend from p for a claim.
func (ps *pools) take(p *pool) *instance {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	for len(p.ready) > 0 {
		inst := p.ready[0]
		p.ready = p.ready[1:]
		if inst.state() == berth.StateReady {
			p.claimed[inst.id] = inst
			return inst
		}
		// Stopping: its watch forgets it.
	}
	return nil
}

// putBack returns a backend whose claim did not happen to the front of
// p's ready list.
func (ps *pools) putBack(p *pool, inst *instance) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if _, ok := p.claimed[inst.id]; !ok {
		return // it ended meanwhile
	}
	delete(p.claimed, inst.id)
	p.ready = append([]*instance{inst}, p.ready...)
}

// match returns the pool a connect claims from: the one it names, or the
// one whose template equals its spawn config.
func (ps *pools) match(req *api.ConnectRequest) (*pool, string) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if req.Pool != "" {
		return ps.byName[req.Pool], req.Pool
	}
	for name, p := range ps.byName {
		if berth.SameSpawn(&p.def.Spawn, req.Spawn) {
			return p, name
		}
	}
	return nil, ""
}

// resolvePool checks a connect's pool and gives it the pool's template as
// its spawn config. Errors are *berth.FieldError.
func (m *Manager) resolvePool(req *api.ConnectRequest) error {
	if req.Pool == "" {
		return nil
	}
	if err := berth.ValidatePoolName(req.Pool); err != nil {
		return &berth.FieldError{Field: "pool", Message: err.Error()}
	}
	if m.pools == nil {
		return &berth.FieldError{Field: "pool", Message: "this server keeps no pools"}
	}
	m.pools.mu.Lock()
	p := m.pools.byName[req.Pool]
	var tmpl berth.SpawnConfig
	if p != nil {
		tmpl = p.def.Spawn
	}
	m.pools.mu.Unlock()
	if p == nil {
		return &berth.FieldError{Field: "pool", Message: fmt.Sprintf("no pool named %q (see GET /v1/pools)", req.Pool)}
	}
	if req.Key == "" {
		return &berth.FieldError{Field: "key", Message: "is required to claim a backend from a pool: a claim gives the backend a key"}
	}
	if req.Spawn != nil && !berth.SameSpawn(req.Spawn, &tmpl) {
		return &berth.FieldError{Field: "spawn", Message: fmt.Sprintf("differs from pool %q's template; omit it, or send the template unchanged", req.Pool)}
	}
	req.Spawn = &tmpl
	return nil
}

// claim gives req.Key a ready pooled backend, if req names a pool (or
// asks for a pool's template) and one is ready: ok says whether it did.
// It runs where spawn would, so concurrent connects for the key wait for
// it (getOrSpawn's pending). A backend that fails its claim is stopped,
// and the next one is tried; when none is left, the caller spawns cold.
func (m *Manager) claim(ctx context.Context, req *api.ConnectRequest) (h held, ok bool, err error) {
	ps := m.pools
	if ps == nil || req.Key == "" || req.Spawn == nil {
		return held{}, false, nil
	}
	p, name := ps.match(req)
	if p == nil {
		return held{}, false, nil
	}
	// The claim is shared by every connect for the key (getOrSpawn's
	// pending): the first one's going away must not cut it short.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), maxClaimTime)
	defer cancel()
	for {
		inst := ps.take(p)
		if inst == nil {
			ps.metrics.cold(name)
			return held{}, false, nil
		}
		// The claim's head goes out before the store's write, the key
		// only after it (pool_claim.go).
		call := m.openClaim(inst, req.Key, req.User)
		b, claimed, err := ps.store.ClaimBackend(ctx, inst.id, req.Key, req.User)
		if err != nil || !claimed {
			call.abort()
		}
		switch {
		case errors.Is(err, berth.ErrInvalidTransition):
			continue // it is stopping: its watch forgets it
		case err != nil:
			// Whether the write took effect may be unknown (a commit
			// whose answer was lost): the backend, which learned
			// nothing, is stopped, which also frees the key if it did.
			ps.metrics.failed(name)
			m.recordEvent(inst, "claim not recorded: "+err.Error())
			inst.requestStop(berth.ReasonSpawnFailed, false)
			return held{}, false, fmt.Errorf("claim pooled backend: %w", err)
		case !claimed:
			// Another node holds the key: the cold path answers as it
			// would (it finds that holder). The backend learned nothing
			// (its claim was cut off) and waits for the next, on a new
			// connection.
			ps.putBack(p, inst)
			m.mu.Lock()
			if !m.closing {
				m.wg.Add(1)
				go func() {
					defer m.wg.Done()
					ps.predial(inst)
				}()
			}
			m.mu.Unlock()
			return held{}, false, nil
		}
		inst.mu.Lock()
		inst.b.Key, inst.b.User, inst.b.FencingToken = b.Key, b.User, b.FencingToken
		inst.mu.Unlock()
		m.publish(inst.id)
		started := time.Now()
		if err := m.deliverClaim(ctx, inst, call); err != nil {
			m.log.Warn("pool: claim failed; stopping the backend", "pool", name, "backend", inst.id, "key", req.Key, "err", err)
			m.recordEvent(inst, "claim failed: "+err.Error())
			ps.metrics.failed(name)
			inst.requestStop(berth.ReasonSpawnFailed, true)
			// The key is the failed backend's until it is terminated.
			if err := waitDone(ctx, inst); err != nil {
				return held{}, false, err
			}
			continue
		}
		m.mu.Lock()
		inst.key = req.Key
		m.byKey[req.Key] = inst
		m.mu.Unlock()
		inst.End() // idle from now on, as any backend
		ps.metrics.claimed(name, time.Since(started))
		time.AfterFunc(refillDelay, ps.kick)
		return held{inst: inst}, true, nil
	}
}

// claimToken is what a pooled backend gets as BERTH_CLAIM_TOKEN and Berth
// sends with its claim: derived from the backend's secret, which the
// backend learns only in the claim, so a restarted Berth can claim a
// backend it re-adopted, and the token reveals nothing of the secret.
func claimToken(secret string) string {
	sum := sha256.Sum256([]byte("berth-claim\x00" + secret))
	return hex.EncodeToString(sum[:])
}

// unclaimed reports whether b is a pooled backend that has no key yet.
func unclaimed(b *berth.Backend) bool { return b.Pool != "" && b.Key == "" }

// pooledEnv sets what an unclaimed backend knows of itself at start: its
// id, its pool, and the token its claim will carry. Key, secret, fencing
// token and state URL come with the claim.
func pooledEnv(env map[string]string, b *berth.Backend) {
	env["BERTH_POOL"] = b.Pool
	env["BERTH_CLAIM_TOKEN"] = claimToken(b.Secret)
}

// maxClaimWait bounds a claim's POST: the backend answers once it loaded
// its state.
const maxClaimWait = 30 * time.Second

// maxClaimTime bounds a connect's claims, the wait for failed ones to
// give their key back included.
const maxClaimTime = 2 * time.Minute

// deliverClaim fences inst's new key, prepares its state URL and POSTs the
// claim to the backend, whose 2xx says it has loaded its state: the rest
// of call when openClaim began it (nil: the whole claim).
func (m *Manager) deliverClaim(ctx context.Context, inst *instance, call *claimCall) error {
	b := inst.snapshot()
	req := api.ClaimRequest{BackendID: b.ID, Pool: b.Pool, Key: b.Key, User: b.User, FencingToken: b.FencingToken, Secret: b.Secret}
	if m.cfg.State != nil {
		// As for a start: raise the key's fence to this holder's token
		// (after the previous holder's spooled save landed), and learn
		// the state URL (mode blob); no process starts here, so the spec
		// only carries what Prepare adds.
		spec := runtime.Spec{BackendID: b.ID, Key: b.Key, Spawn: b.Spawn, Env: make(map[string]string)}
		if err := m.cfg.State.Prepare(ctx, b, &spec); err != nil {
			call.abort()
			return fmt.Errorf("prepare state: %w", err)
		}
		req.StateURL = spec.Env["BERTH_STATE_URL"]
	}
	body, _ := json.Marshal(req)
	inst.mu.Lock()
	addr := inst.addr
	inst.mu.Unlock()
	cctx, cancel := context.WithTimeout(ctx, min(b.Spawn.StartupTimeout(), maxClaimWait))
	defer cancel()
	var (
		status int
		msg    []byte
		err    error
	)
	if call != nil {
		status, msg, err = m.finishClaim(cctx, call, addr, claimToken(b.Secret), body)
	} else {
		status, msg, err = m.postClaim(cctx, addr, claimToken(b.Secret), body, m.pools.takeConn(b.ID))
	}
	if err != nil {
		return fmt.Errorf("POST /.berth/claim: %w", err)
	}
	if status/100 != 2 {
		return claimError(status, msg)
	}
	return nil
}

// PutPool creates or replaces a pool. Replacing its template stops its
// unclaimed backends (they run the old one); lowering min_ready stops the
// ready ones beyond it. Errors are *berth.FieldError for bad input.
func (m *Manager) PutPool(ctx context.Context, def *berth.Pool) (*api.Pool, error) {
	ps := m.pools
	if ps == nil {
		return nil, &HTTPError{Status: http.StatusServiceUnavailable, Code: api.CodeUnavailable, Message: "this server keeps no pools (its store has none, or it is still starting)"}
	}
	if err := def.Validate(); err != nil {
		return nil, err
	}
	// As a connect would choose: a template no node can run is refused
	// now rather than failing every start.
	if _, _, err := m.runtimeFor(forPool(&def.Spawn)); err != nil {
		return nil, err
	}
	if err := ps.store.PutPool(ctx, def); err != nil {
		return nil, err
	}
	st := ps.apply(def)
	ps.kick()
	return st, nil
}

// apply makes def this node's definition of its pool: a new pool, or a
// changed one, whose unclaimed backends of an old template stop. Callers
// kick the keeper, which stops ready ones beyond a lowered min_ready.
func (ps *pools) apply(def *berth.Pool) *api.Pool {
	var stop []*instance
	ps.mu.Lock()
	p := ps.byName[def.Name]
	if p == nil {
		p = newPool(*def)
		ps.byName[def.Name] = p
	} else {
		if !berth.SameSpawn(&p.def.Spawn, &def.Spawn) {
			stop = append(stop, p.ready...)
			for _, inst := range p.starting {
				stop = append(stop, inst)
			}
			p.ready = nil
		}
		// A lower min_ready is the next fill's to act on.
		p.def = *def
		p.failures, p.retryAt = 0, time.Time{}
	}
	st := ps.status(p)
	ps.mu.Unlock()
	ps.stopUnclaimed(stop)
	return st
}

// remove forgets a pool on this node and stops its unclaimed backends.
func (ps *pools) remove(name string) {
	ps.mu.Lock()
	p := ps.byName[name]
	delete(ps.byName, name)
	var stop []*instance
	if p != nil {
		stop = append(stop, p.ready...)
		for _, inst := range p.starting {
			stop = append(stop, inst)
		}
		p.ready = nil
	}
	ps.mu.Unlock()
	ps.stopUnclaimed(stop)
}

// syncEvery is how often (in poolTicks) a node re-reads the pools'
// definitions: another replica may have put or deleted one.
const syncEvery = 5

// sync makes this node's pools the store's.
func (ps *pools) sync(ctx context.Context) error {
	defs, err := ps.store.Pools(ctx)
	if err != nil {
		return err
	}
	seen := make(map[string]bool, len(defs))
	for _, d := range defs {
		seen[d.Name] = true
		ps.mu.Lock()
		p := ps.byName[d.Name]
		same := p != nil && p.def.UpdatedAt.Equal(d.UpdatedAt)
		ps.mu.Unlock()
		if !same {
			ps.apply(d)
		}
	}
	ps.mu.Lock()
	var gone []string
	for name := range ps.byName {
		if !seen[name] {
			gone = append(gone, name)
		}
	}
	ps.mu.Unlock()
	for _, name := range gone {
		ps.remove(name)
	}
	return nil
}

// stopUnclaimed stops backends taken out of a pool's ready list: a claim
// can no longer find them, and the store refuses one that already did.
func (ps *pools) stopUnclaimed(insts []*instance) {
	for _, inst := range insts {
		inst.requestStop(berth.ReasonRequested, false)
	}
}

// DeletePool removes a pool and stops its unclaimed backends; claimed
// ones run on.
func (m *Manager) DeletePool(ctx context.Context, name string) error {
	ps := m.pools
	if ps == nil {
		return fmt.Errorf("pool %q: %w", name, berth.ErrNotFound)
	}
	if err := ps.store.DeletePool(ctx, name); err != nil {
		return err
	}
	ps.remove(name)
	return nil
}

// Pool returns a pool's definition and this node's counts, or
// berth.ErrNotFound.
func (m *Manager) Pool(ctx context.Context, name string) (*api.Pool, error) {
	ps := m.pools
	if ps == nil {
		return nil, fmt.Errorf("pool %q: %w", name, berth.ErrNotFound)
	}
	// Another replica may have defined it: the store is the list.
	def, err := ps.store.Pool(ctx, name)
	if err != nil {
		return nil, err
	}
	return ps.current(def), nil
}

// current is def as this node has it, with its counts; a definition
// another replica wrote is taken on first.
func (ps *pools) current(def *berth.Pool) *api.Pool {
	ps.mu.Lock()
	p := ps.byName[def.Name]
	if p != nil && p.def.UpdatedAt.Equal(def.UpdatedAt) {
		defer ps.mu.Unlock()
		return ps.status(p)
	}
	ps.mu.Unlock()
	st := ps.apply(def)
	ps.kick()
	return st
}

// Pools lists the pools, by name.
func (m *Manager) Pools(ctx context.Context) ([]api.Pool, error) {
	out := []api.Pool{}
	ps := m.pools
	if ps == nil {
		return out, nil
	}
	defs, err := ps.store.Pools(ctx)
	if err != nil {
		return nil, err
	}
	for _, d := range defs {
		out = append(out, *ps.current(d))
	}
	return out, nil
}

// status is p as the API shows it. ps.mu is held.
func (ps *pools) status(p *pool) *api.Pool {
	return &api.Pool{
		Name: p.def.Name, Spawn: p.def.Spawn, MinReady: p.def.MinReady, Max: p.def.Max,
		Schedule: p.def.Schedule, MinReadyNow: p.def.MinReadyAt(time.Now()),
		Ready: len(p.ready), Starting: len(p.starting), Claimed: len(p.claimed),
		CreatedAt: p.def.CreatedAt, UpdatedAt: p.def.UpdatedAt,
	}
}
