// Package server is Berth's control plane: the Manager that takes keys, spawns
// backends through a runtime, drives each backend's lifecycle (readiness, idle
// and lifetime limits, stops) and records every step in the store; and the
// HTTP control API in front of it.
//
// The Manager is the only writer of lifecycle state. It keeps live backends in
// memory so warm connects and proxy lookups never touch the store, and it
// reconciles the store against the runtimes when it starts, so a Berth killed
// with SIGKILL leaves nothing running unaccounted for.
package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base32"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
	"github.com/berthhq/berth/logs"
	"github.com/berthhq/berth/runtime"
	"github.com/berthhq/berth/store"
	"github.com/berthhq/berth/token"
)

// Config configures a Manager.
type Config struct {
	Store    store.Store
	Runtimes map[string]runtime.Runtime // by name: "process", "docker"
	Logs     *logs.Store
	Signer   *token.Signer
	Logger   *slog.Logger
	Metrics  *Metrics

	// PublicURL is the proxy's base URL as browsers reach it.
	PublicURL string
	// URLFor, if set, makes the URL connect returns for backend id and
	// its token (a hostname per backend); nil: PublicURL/<token>/.
	URLFor func(id, tok string) string
	// APIURL is the control API's base URL, for status_url.
	APIURL string
	// TokenTTL is how long a connect's token is valid (default one hour).
	TokenTTL time.Duration
	// FreePort picks a port for runtimes that need one chosen by Berth.
	FreePort func() (int, error)
	// State keeps backends' state across sessions (package state); nil
	// means none is kept.
	State StateLayer
	// ReuseProbeConn, if set, takes over the connection on which a
	// starting backend first answered its readiness probe, so the proxy
	// can send the first request on it (proxy.Proxy.Keep).
	ReuseProbeConn ProbeConnReuser
	// KeepClaimConn, if set, takes over the connection on which a pooled
	// backend answered its claim 2xx (its response read whole, the
	// connection kept open by the backend), so the proxy can send the
	// key's first request on it (proxy.Server.KeepIdle).
	KeepClaimConn func(addr string, c net.Conn)
	// Node names this Berth in records.
	Node string
}

// StateLayer takes part in a backend's life to keep its state (package
// state implements it). The lifecycle calls it around starts and stops.
type StateLayer interface {
	// Prepare runs before the runtime starts b. It raises the key's fence
	// to b's token and may add env vars, a state directory and a volume
	// lock to spec. An error fails the spawn.
	Prepare(ctx context.Context, b *berth.Backend, spec *runtime.Spec) error
	// SaveFinal runs after b exited, before it is terminated. An error
	// keeps b terminating, and its key held, and is retried: its state
	// must not be lost.
	SaveFinal(ctx context.Context, b *berth.Backend) error
	// Resume runs when a restarted Berth re-adopts a running b.
	Resume(ctx context.Context, b *berth.Backend) error
}

func (c *Config) setDefaults() {
	if c.TokenTTL == 0 {
		c.TokenTTL = time.Hour
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Metrics == nil {
		c.Metrics = NewMetrics(nil)
	}
	if c.PublicURL == "" {
		c.PublicURL = "http://127.0.0.1:7080"
	}
	if c.APIURL == "" {
		c.APIURL = "http://127.0.0.1:7070"
	}
	c.PublicURL = strings.TrimRight(c.PublicURL, "/")
	c.APIURL = strings.TrimRight(c.APIURL, "/")
}

// Manager owns every live backend of this Berth.
type Manager struct {
	cfg  Config
	log  *slog.Logger
	hub  *hub
	ctx  context.Context // cancelled by Shutdown after backends stopped
	stop context.CancelFunc
	wg   sync.WaitGroup

	starting atomic.Int64 // backends polled for readiness now

	mu       sync.Mutex
	live     map[string]*instance // by backend id
	byKey    map[string]*instance // live key holders
	closing  bool
	spawning map[string]*pending // keys whose CreateBackend is in flight
	creating map[string]bool     // ids of backends this Manager is recording and will start

	cluster *cluster // nil unless this Manager is a replica (Join)
	pools   *pools   // nil until StartPools (pool.go)

	lostStops chan struct{}        // a slot per stop of a lost backend's instance
	sweeper   sync.WaitGroup       // sweepLoop and the late lists
	lateLists map[string]*lateList // by runtime; set by Reconcile
}

// maxLostStops bounds the lost backends' instances a restart stops at once.
const maxLostStops = 8

// pending lets concurrent connects for one key share a single CreateBackend.
type pending struct {
	done chan struct{}
	held held
	err  error
}

// New makes a Manager. Call Reconcile before serving.
func New(cfg Config) (*Manager, error) {
	cfg.setDefaults()
	if cfg.Store == nil || cfg.Logs == nil || cfg.Signer == nil || len(cfg.Runtimes) == 0 {
		return nil, errors.New("server: store, logs, signer and a runtime are required")
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Manager{
		cfg:      cfg,
		log:      cfg.Logger,
		hub:      newHub(),
		ctx:      ctx,
		stop:     cancel,
		live:     make(map[string]*instance),
		byKey:    make(map[string]*instance),
		spawning: make(map[string]*pending),
		creating: make(map[string]bool),

		lostStops: make(chan struct{}, maxLostStops),
	}, nil
}

// ConnectResult is what Connect returns.
type ConnectResult struct {
	Backend *berth.Backend
	Spawned bool
}

// Connect gets the live backend for req.Key or spawns one. It validates the
// request (errors are *berth.FieldError).
func (m *Manager) Connect(ctx context.Context, req *api.ConnectRequest) (*api.ConnectResponse, error) {
	if err := m.resolvePool(req); err != nil {
		return nil, err
	}
	if err := validateConnect(req); err != nil {
		return nil, err
	}
	wait := time.Duration(req.WaitTimeoutSeconds) * time.Second
	if wait == 0 {
		wait = 60 * time.Second
	}
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	var (
		h       held
		spawned bool
		b       *berth.Backend
	)
	for {
		var err error
		h, spawned, err = m.getOrSpawn(ctx, req)
		if err != nil {
			return nil, err
		}
		b = h.remote
		if !req.Wait {
			break
		}
		if h.inst != nil {
			select {
			case <-h.inst.readyRecorded:
			case <-wctx.Done():
			}
			break
		}
		if rb, err := m.waitRemote(wctx, b.ID); err == nil {
			b = rb
		}
		// A holder another node ran that ended while this connect waited
		// (its node died, say) is not this connect's to report: the key
		// is free, so connect again, as a connect that came a moment later
		// would.
		if b.State != berth.StateTerminated || spawned || req.Spawn == nil || wctx.Err() != nil {
			break
		}
		m.forgetHolder(b)
	}
	m.cfg.Metrics.connect(spawned)
	if h.inst != nil {
		h.inst.awaitThaw(wctx) // a frozen backend thaws on connect; bounded by the wait
		b = h.inst.snapshot()
	}
	if req.Wait && b.State == berth.StateTerminated {
		return nil, m.endedError(ctx, b)
	}
	user := req.User
	tok := m.cfg.Signer.Issue(b.ID, user, time.Now().Add(m.cfg.TokenTTL))
	return &api.ConnectResponse{
		BackendID:    b.ID,
		Key:          b.Key,
		Spawned:      spawned,
		State:        b.State,
		Reason:       b.Reason,
		ExitCode:     b.ExitCode,
		URL:          m.backendURL(b.ID, tok),
		Token:        tok,
		StatusURL:    m.cfg.APIURL + "/v1/backends/" + b.ID + "/events",
		FencingToken: b.FencingToken,
		Pool:         b.Pool,
	}, nil
}

func (m *Manager) backendURL(id, tok string) string {
	if m.cfg.URLFor != nil {
		return m.cfg.URLFor(id, tok)
	}
	return m.cfg.PublicURL + "/" + tok + "/"
}

func validateConnect(req *api.ConnectRequest) error {
	if req.Key != "" {
		if err := berth.ValidateKey(req.Key); err != nil {
			return &berth.FieldError{Field: "key", Message: err.Error()}
		}
		if berth.Reserved(req.Key) {
			return &berth.FieldError{Field: "key", Message: "keys starting with " + berth.ReservedKeyPrefix + " are Berth's own"}
		}
	}
	if len(req.User) > 256 {
		return &berth.FieldError{Field: "user", Message: "must be at most 256 characters"}
	}
	for _, r := range req.User {
		if r < 0x20 || r == 0x7f || r == utf8.RuneError {
			return &berth.FieldError{Field: "user", Message: "must be valid UTF-8 without control characters (it is sent to backends as a header)"}
		}
	}
	if req.WaitTimeoutSeconds < 0 || req.WaitTimeoutSeconds > 3600 {
		return &berth.FieldError{Field: "wait_timeout_seconds", Message: "must be " + api.WaitTimeoutRange}
	}
	if req.Spawn == nil {
		if req.Key == "" {
			return &berth.FieldError{Field: "spawn", Message: "is required when no key is given"}
		}
		return nil
	}
	if err := req.Spawn.Validate("spawn"); err != nil {
		return err
	}
	if req.Key == "" && req.Spawn.StateMode() != berth.StateModeNone {
		return &berth.FieldError{Field: "spawn.state.mode", Message: "needs a key: state is saved per key"}
	}
	return nil
}

// held is a key's backend as a connect finds it: an instance this Manager
// runs, or the record of one another node runs (a replica's).
type held struct {
	inst   *instance
	remote *berth.Backend
}

// getOrSpawn returns the key's live backend, or creates one. Concurrent
// callers for one key share a single store write.
func (m *Manager) getOrSpawn(ctx context.Context, req *api.ConnectRequest) (held, bool, error) {
	for {
		if req.Key == "" {
			return m.spawn(ctx, req)
		}
		m.mu.Lock()
		if m.closing {
			m.mu.Unlock()
			return held{}, false, errShuttingDown
		}
		if inst := m.byKey[req.Key]; inst != nil {
			m.mu.Unlock()
			if inst.terminating() {
				// The key is still held until the old backend's final save
				// completes; wait for that, then take the key afresh.
				if err := waitDone(ctx, inst); err != nil {
					return held{}, false, err
				}
				continue
			}
			return held{inst: inst}, false, nil
		}
		if p := m.spawning[req.Key]; p != nil {
			m.mu.Unlock()
			select {
			case <-p.done:
			case <-ctx.Done():
				return held{}, false, ctx.Err()
			}
			if errors.Is(p.err, errRetry) || (p.held.remote != nil && p.held.remote.State == berth.StateTerminating) {
				continue // as the connect that made the store call does
			}
			if p.err != nil {
				return held{}, false, p.err
			}
			return p.held, false, nil
		}
		if req.Spawn == nil && m.cluster == nil {
			m.mu.Unlock()
			return held{}, false, fmt.Errorf("key %q is not held by a live backend and the request has no spawn config: %w", req.Key, berth.ErrNotFound)
		}
		if b := m.cachedHolder(req.Key); b != nil {
			m.mu.Unlock()
			return held{remote: b}, false, nil
		}
		p := &pending{done: make(chan struct{})}
		m.spawning[req.Key] = p
		m.mu.Unlock()

		var spawned bool
		if req.Spawn == nil {
			p.held, p.err = m.remoteHolder(ctx, req.Key)
		} else {
			p.held, spawned, p.err = m.spawn(ctx, req)
		}
		m.mu.Lock()
		delete(m.spawning, req.Key)
		m.mu.Unlock()
		close(p.done)
		if errors.Is(p.err, errRetry) {
			continue
		}
		if b := p.held.remote; b != nil && b.State == berth.StateTerminating {
			// As for a holder here: the key passes on once the old
			// backend's final save is done.
			if _, err := m.waitRemote(ctx, b.ID); err != nil {
				return held{}, false, err
			}
			if err := ctx.Err(); err != nil {
				return held{}, false, fmt.Errorf("waiting for the key's previous backend to finish terminating: %w", err)
			}
			continue
		}
		if p.held.remote != nil {
			m.cacheHolder(p.held.remote)
		}
		return p.held, spawned, p.err
	}
}

var (
	errShuttingDown = errors.New("berth is shutting down")
	errRetry        = errors.New("retry")
)

func waitDone(ctx context.Context, inst *instance) error {
	select {
	case <-inst.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for the key's previous backend to finish terminating: %w", ctx.Err())
	}
}

// spawn records a new backend and starts its lifecycle, or returns the
// key's holder that the store knows and this Manager does not run: one
// another node runs. created says which.
func (m *Manager) spawn(ctx context.Context, req *api.ConnectRequest) (h held, created bool, err error) {
	if h, ok, err := m.claim(ctx, req); ok || err != nil {
		return h, ok, err // a warm pool's backend (pool.go)
	}
	rtName, rt, err := m.runtimeFor(req.Spawn)
	if err != nil {
		return held{}, false, err
	}
	node := m.cfg.Node
	if m.cluster != nil {
		if node, err = m.place(rtName, rt != nil); err != nil {
			return held{}, false, err
		}
	}
	now := time.Now().UTC()
	b := &berth.Backend{
		ID:        newID(),
		Key:       req.Key,
		User:      req.User,
		State:     berth.StateScheduled,
		Runtime:   rtName,
		Spawn:     *req.Spawn,
		Secret:    newSecret(),
		Node:      node,
		CreatedAt: now,
	}
	// A replica hears of the record on the store's feed too, perhaps
	// before this goroutine has it in memory: pickUp must leave it alone.
	m.mu.Lock()
	m.creating[b.ID] = true
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		delete(m.creating, b.ID)
		m.mu.Unlock()
	}()
	holder, created, err := m.cfg.Store.CreateBackend(ctx, b)
	if err != nil {
		return held{}, false, fmt.Errorf("record backend: %w", err)
	}
	if !created {
		if m.cluster != nil && holder.Node != m.cfg.Node {
			return held{remote: holder}, false, nil
		}
		// The store knows a holder this Manager does not have in memory: it
		// was recovered by Reconcile or is being torn down. Wait briefly.
		m.mu.Lock()
		inst := m.live[holder.ID]
		m.mu.Unlock()
		if inst == nil {
			return held{}, false, fmt.Errorf("key %q is held by backend %s, which this server does not manage: %w", req.Key, holder.ID, berth.ErrKeyHeld)
		}
		return held{inst: inst}, false, errRetry
	}
	m.cfg.Metrics.spawns.Inc()
	if node != m.cfg.Node {
		return held{remote: b}, true, nil // the node it was placed on starts it
	}
	inst := newInstance(b, rt)
	m.adopt(inst)
	m.publish(b.ID)
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		m.run(inst, nil)
	}()
	return held{inst: inst}, true, nil
}

// remoteHolder is a connect without a spawn config for a key this Manager
// does not hold: another node may.
func (m *Manager) remoteHolder(ctx context.Context, key string) (held, error) {
	b, err := m.cfg.Store.KeyHolder(ctx, key)
	if err == nil && b.Node != m.cfg.Node {
		return held{remote: b}, nil
	}
	if err != nil && !errors.Is(err, berth.ErrNotFound) {
		return held{}, err
	}
	return held{}, fmt.Errorf("key %q is not held by a live backend and the request has no spawn config: %w", key, berth.ErrNotFound)
}

// Backend returns a backend's record, with live activity folded in.
func (m *Manager) Backend(ctx context.Context, id string) (*berth.Backend, error) {
	m.mu.Lock()
	inst := m.live[id]
	m.mu.Unlock()
	if inst != nil {
		return inst.snapshot(), nil
	}
	b, err := m.cfg.Store.Backend(ctx, id)
	if err != nil {
		return nil, err
	}
	return b, nil
}

// Backends lists backends from the store, with live activity folded in.
func (m *Manager) Backends(ctx context.Context, f store.Filter) ([]*berth.Backend, error) {
	bs, err := m.cfg.Store.Backends(ctx, f)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	for i, b := range bs {
		if inst := m.live[b.ID]; inst != nil {
			bs[i] = inst.snapshot()
		}
	}
	m.mu.Unlock()
	return bs, nil
}

// Terminate asks a backend to stop. Hard stops kill at once.
func (m *Manager) Terminate(ctx context.Context, id string, hard bool) error {
	m.mu.Lock()
	inst := m.live[id]
	m.mu.Unlock()
	if inst == nil {
		b, err := m.cfg.Store.Backend(ctx, id)
		if err != nil {
			return err
		}
		if m.cluster != nil && b.State.Live() && b.Node != m.cfg.Node {
			return m.terminateRemote(ctx, b, hard)
		}
		if m.cluster != nil && b.State == berth.StateScheduled {
			// Placed here, not picked up yet: nothing runs to stop.
			_, err := m.cfg.Store.Transition(ctx, b.ID, store.Transition{To: berth.StateTerminated, Reason: berth.ReasonRequested,
				Message: "terminated before node " + m.cfg.Node + " started it"})
			if err != nil && !errors.Is(err, berth.ErrInvalidTransition) {
				return err
			}
		}
		return nil // already terminated: terminating again is a no-op
	}
	inst.requestStop(berth.ReasonRequested, hard)
	return nil
}

// Events returns a backend's history after seq. Callers asking the same
// of a subscribed backend share one store read (see hub) and so one slice,
// which they must not modify.
func (m *Manager) Events(ctx context.Context, id string, after int64) ([]berth.Event, error) {
	return m.hub.events(ctx, id, after, func(ctx context.Context) ([]berth.Event, error) {
		return m.cfg.Store.Events(ctx, id, after)
	})
}

// Subscribe returns a channel that receives a value whenever backend id
// changes state, and a function to stop the subscription.
func (m *Manager) Subscribe(id string) (<-chan struct{}, func()) {
	return m.hub.subscribe(id)
}

func (m *Manager) publish(id string) { m.hub.publish(id) }

// Watch is Subscribe for every backend: changed receives a value when
// take has the ids of backends that changed since its last call.
func (m *Manager) Watch() (changed <-chan struct{}, take func() []string, cancel func()) {
	return m.hub.watch()
}

// Logs copies a backend's output to w, following it if asked.
func (m *Manager) Logs(ctx context.Context, id string, follow bool, w io.Writer) error {
	if _, err := m.Backend(ctx, id); err != nil {
		return err
	}
	err := m.cfg.Logs.Copy(ctx, id, follow, w)
	if errors.Is(err, berth.ErrNotFound) {
		return nil // a backend whose output is no longer kept: empty log
	}
	return err
}

// waitTailLines is how much of its output a connect that waited for a
// backend which ended instead answers with.
const waitTailLines = 20

// EndedError is what a connect that waited for ready answers when the
// backend terminated instead: no URL (it would lead nowhere), but why it
// ended, in the words of its history, and the end of its output.
type EndedError struct {
	Backend *berth.Backend
	Cause   string // the message of its terminated event
	Logs    string // the last lines of its output
}

func (e *EndedError) Error() string {
	msg := fmt.Sprintf("backend %s terminated (%s) before it was ready", e.Backend.ID, e.Backend.Reason)
	if e.Backend.ReadyAt != nil {
		msg = fmt.Sprintf("backend %s terminated (%s) right after it was ready", e.Backend.ID, e.Backend.Reason)
	}
	if e.Cause != "" {
		msg += ": " + e.Cause
	}
	return msg
}

func (m *Manager) endedError(ctx context.Context, b *berth.Backend) error {
	e := &EndedError{Backend: b, Logs: m.outputTail(b.ID, waitTailLines)}
	if evs, err := m.Events(ctx, b.ID, 0); err == nil && len(evs) > 0 {
		e.Cause = evs[len(evs)-1].Message
	}
	return e
}

// outputTail returns the last lines (at most n, and at most 4 KiB) of a
// backend's output.
func (m *Manager) outputTail(id string, n int) string {
	var buf bytes.Buffer
	if err := m.cfg.Logs.Copy(context.Background(), id, false, &buf); err != nil {
		return ""
	}
	return lastLines(buf.Bytes(), n, 4<<10)
}

// lastLines returns the last n lines of out, without the final newline,
// and of those at most the last max bytes, from a line start if one is
// within them.
func lastLines(out []byte, n, max int) string {
	out = bytes.TrimRight(out, "\n")
	start := len(out)
	for range n {
		j := bytes.LastIndexByte(out[:start], '\n')
		if j < 0 {
			start = -1
			break
		}
		start = j
	}
	tail := out[start+1:]
	if len(tail) > max {
		tail = tail[len(tail)-max:]
		if i := bytes.IndexByte(tail, '\n'); i >= 0 {
			tail = tail[i+1:]
		}
	}
	return string(tail)
}

// Shutdown stops every live backend gracefully (each within its grace
// period) and waits for their lifecycles to end, or for ctx.
func (m *Manager) Shutdown(ctx context.Context) error {
	m.mu.Lock()
	m.closing = true
	insts := make([]*instance, 0, len(m.live))
	for _, inst := range m.live {
		insts = append(insts, inst)
	}
	m.mu.Unlock()
	for _, inst := range insts {
		inst.requestStop(berth.ReasonRequested, false)
	}
	done := make(chan struct{})
	go func() { m.wg.Wait(); close(done) }()
	var err error
	select {
	case <-done:
		m.sweep(ctx) // what an engine finished for a Berth killed before
	case <-ctx.Done():
		err = fmt.Errorf("backends still stopping: %w", ctx.Err())
	}
	m.stop()
	m.sweeper.Wait()
	return err
}

// LiveCount is the number of backends this Manager runs.
func (m *Manager) LiveCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.live)
}

func (m *Manager) forget(inst *instance) {
	m.mu.Lock()
	delete(m.live, inst.id)
	if inst.key != "" && m.byKey[inst.key] == inst {
		delete(m.byKey, inst.key)
	}
	m.mu.Unlock()
}

func encodeHandle(h *runtime.Handle) []byte {
	b, _ := json.Marshal(h) // a Handle always marshals
	return b
}

func decodeHandle(b []byte) (*runtime.Handle, error) {
	if len(b) == 0 {
		return nil, errors.New("no runtime handle recorded")
	}
	var h runtime.Handle
	if err := json.Unmarshal(b, &h); err != nil {
		return nil, fmt.Errorf("decode runtime handle: %w", err)
	}
	return &h, nil
}

var idEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

func newID() string {
	var b [10]byte
	rand.Read(b[:])
	return "bk_" + idEncoding.EncodeToString(b[:])
}

func newSecret() string {
	var b [24]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// LiveBackend returns a backend that is live here (state.Holders).
func (m *Manager) LiveBackend(id string) (*berth.Backend, bool) {
	m.mu.Lock()
	inst := m.live[id]
	m.mu.Unlock()
	if inst == nil {
		return nil, false
	}
	b := inst.snapshot()
	return b, b.State.Live()
}

// KeyLive reports whether a live backend holds key (state.Holders).
func (m *Manager) KeyLive(key string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.byKey[key] != nil || m.spawning[key] != nil
}

// SetStateLayer sets Config.State. Call it before Reconcile and serving.
func (m *Manager) SetStateLayer(s StateLayer) { m.cfg.State = s }

// SetReuseProbeConn sets Config.ReuseProbeConn. Call it before Reconcile
// and serving.
func (m *Manager) SetReuseProbeConn(f ProbeConnReuser) { m.cfg.ReuseProbeConn = f }

// SetKeepClaimConn sets Config.KeepClaimConn. Call it before StartPools
// and serving.
func (m *Manager) SetKeepClaimConn(f func(addr string, c net.Conn)) { m.cfg.KeepClaimConn = f }
