package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/store"
)

const (
	// shortLease expires within a test; a test only ever asserts that it
	// HAS expired, after waitOut, never that it has not.
	shortLease = 200 * time.Millisecond
	// longLease outlasts any test, for the nodes that must stay live.
	longLease = time.Hour
)

// waitOut sleeps until a lease of shortLease granted before the call has
// expired by the database's clock too: the two clocks may differ in time
// but not, by anything close to a second, in rate.
func waitOut() { time.Sleep(shortLease + 300*time.Millisecond) }

func newNode(id string) *store.Node {
	return &store.Node{ID: id, ProxyAddr: id + ".internal:7080", APIAddr: id + ".internal:7071",
		Runtimes: []string{"process", "docker"}, Capacity: 40}
}

func mustRegister(t *testing.T, s store.Store, id string, ttl time.Duration) *store.Node {
	t.Helper()
	n, err := s.RegisterNode(t.Context(), newNode(id), ttl)
	if err != nil {
		t.Fatalf("RegisterNode(%s): %v", id, err)
	}
	return n
}

// onNode is a new backend placed on node.
func onNode(id, key, node string) *berth.Backend {
	b := newBackend(id, key)
	b.Node = node
	return b
}

func checkLost(t *testing.T, s store.Store, id string) {
	t.Helper()
	b := mustGet(t, s, id)
	if b.State != berth.StateTerminated || b.Reason != berth.ReasonLost || b.TerminatedAt == nil {
		t.Errorf("%s: %s (reason %q, terminated at %v); want terminated, lost, with its time", id, b.State, b.Reason, b.TerminatedAt)
	}
	es, err := s.Events(t.Context(), id, 0)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range es {
		if e.State == berth.StateTerminated {
			n++
			if e.Reason != berth.ReasonLost {
				t.Errorf("%s: terminated event with reason %q, want lost", id, e.Reason)
			}
		}
	}
	if n != 1 {
		t.Errorf("%s: %d terminated events, want 1", id, n)
	}
}

func testNodes(t *testing.T, s store.Store) {
	ctx := t.Context()
	if ns, err := s.Nodes(ctx); err != nil || len(ns) != 0 {
		t.Fatalf("Nodes of an empty store = %v, %v; want none", ns, err)
	}
	ttl := 90 * time.Second
	n := mustRegister(t, s, "node-b", ttl)
	want := newNode("node-b")
	if n.ID != want.ID || n.ProxyAddr != want.ProxyAddr || n.APIAddr != want.APIAddr ||
		!slices.Equal(n.Runtimes, want.Runtimes) || n.Capacity != 40 || n.Drained || n.Live != 0 {
		t.Errorf("registered node = %+v, want %+v", n, want)
	}
	// All three times are the database's now at the register.
	if !n.StartedAt.Equal(n.HeartbeatAt) || n.LeaseExpiresAt.Sub(n.HeartbeatAt) != ttl {
		t.Errorf("started %v, heartbeat %v, lease expires %v; want started = heartbeat = expiry - %v",
			n.StartedAt, n.HeartbeatAt, n.LeaseExpiresAt, ttl)
	}
	if n.HeartbeatAt.Location() != time.UTC || n.LeaseExpiresAt.Location() != time.UTC {
		t.Errorf("node times in %v, want UTC", n.HeartbeatAt.Location())
	}

	renewed, err := s.RenewLease(ctx, "node-b", 2*ttl)
	if err != nil {
		t.Fatalf("RenewLease: %v", err)
	}
	if renewed.HeartbeatAt.Before(n.HeartbeatAt) || renewed.LeaseExpiresAt.Sub(renewed.HeartbeatAt) != 2*ttl ||
		!renewed.StartedAt.Equal(n.StartedAt) {
		t.Errorf("after renew: %+v; want heartbeat ≥ %v, lease 2×ttl after it, start unchanged", renewed, n.HeartbeatAt)
	}
	for _, bad := range []struct {
		id  string
		ttl time.Duration
	}{{"", ttl}, {"node-c", 0}, {"node-c", -time.Second}} {
		if _, err := s.RegisterNode(ctx, newNode(bad.id), bad.ttl); err == nil {
			t.Errorf("RegisterNode(%q, ttl %v): no error", bad.id, bad.ttl)
		}
	}
	if _, err := s.RenewLease(ctx, "node-missing", ttl); !errors.Is(err, berth.ErrLeaseExpired) {
		t.Errorf("RenewLease of an unknown node: %v, want ErrLeaseExpired", err)
	}

	// Live counts the node's live backends only.
	for i, st := range []berth.State{berth.StateScheduled, berth.StateReady, berth.StateTerminated} {
		id := fmt.Sprintf("bk_%d", i)
		mustCreate(t, s, onNode(id, "doc-"+id, "node-b"))
		if st != berth.StateScheduled {
			mustTransition(t, s, id, st)
		}
	}
	mustCreate(t, s, onNode("bk_elsewhere", "doc-x", "node-a"))

	if err := s.SetDrained(ctx, "node-b", true); err != nil {
		t.Fatalf("SetDrained: %v", err)
	}
	if err := s.SetDrained(ctx, "node-missing", true); !errors.Is(err, berth.ErrNotFound) {
		t.Errorf("SetDrained of an unknown node: %v, want ErrNotFound", err)
	}
	// A restart re-registers: new addresses are taken, the drain is kept.
	again := newNode("node-b")
	again.ProxyAddr, again.Runtimes, again.Capacity = "10.0.0.2:7080", nil, 0
	if _, err := s.RegisterNode(ctx, again, ttl); err != nil {
		t.Fatal(err)
	}
	mustRegister(t, s, "node-a", ttl)

	ns, err := s.Nodes(ctx)
	if err != nil || len(ns) != 2 {
		t.Fatalf("Nodes = %v, %v; want 2", ns, err)
	}
	if ns[0].ID != "node-a" || ns[1].ID != "node-b" {
		t.Errorf("Nodes in order %s, %s; want node-a, node-b", ns[0].ID, ns[1].ID)
	}
	b := ns[1]
	if !b.Drained || b.ProxyAddr != "10.0.0.2:7080" || b.Runtimes != nil || b.Capacity != 0 || b.Live != 2 {
		t.Errorf("node-b = %+v; want drained kept, new address, no runtimes, no cap, 2 live", b)
	}
	if ns[0].Live != 1 || ns[0].Drained {
		t.Errorf("node-a = %+v; want 1 live, not drained", ns[0])
	}
	if err := s.SetDrained(ctx, "node-b", false); err != nil {
		t.Fatal(err)
	}
	if ns, _ := s.Nodes(ctx); len(ns) != 2 || ns[1].Drained {
		t.Errorf("after undrain: %+v", ns)
	}
}

func testLeaseExpires(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustRegister(t, s, "node-a", shortLease)
	waitOut()
	if _, err := s.RenewLease(ctx, "node-a", longLease); !errors.Is(err, berth.ErrLeaseExpired) {
		t.Fatalf("RenewLease after expiry: %v, want ErrLeaseExpired", err)
	}
	// Refused means refused: the lease was not extended.
	if _, err := s.RenewLease(ctx, "node-a", longLease); !errors.Is(err, berth.ErrLeaseExpired) {
		t.Fatalf("second RenewLease after expiry: %v, want ErrLeaseExpired", err)
	}
	// Registering again starts a new lease.
	mustRegister(t, s, "node-a", longLease)
	if _, err := s.RenewLease(ctx, "node-a", longLease); err != nil {
		t.Errorf("RenewLease after registering again: %v", err)
	}
}

func testExpireNodes(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustRegister(t, s, "node-dead", shortLease)
	mustRegister(t, s, "node-live", longLease)
	mustCreate(t, s, onNode("bk_dead_1", "doc-1", "node-dead"))
	mustTransition(t, s, "bk_dead_1", berth.StateReady)
	mustCreate(t, s, onNode("bk_dead_2", "", "node-dead"))
	mustTransition(t, s, "bk_dead_2", berth.StateTerminating)
	mustCreate(t, s, onNode("bk_dead_done", "doc-3", "node-dead"))
	mustTransition(t, s, "bk_dead_done", berth.StateTerminated)
	mustCreate(t, s, onNode("bk_live", "doc-4", "node-live"))
	// A node without a row is one Berth without replicas: never expired.
	mustCreate(t, s, onNode("bk_local", "doc-5", "local"))
	doneBefore, _ := s.Events(ctx, "bk_dead_done", 0)
	waitOut()

	lost, err := s.ExpireNodes(ctx)
	if err != nil {
		t.Fatalf("ExpireNodes: %v", err)
	}
	var ids []string
	for _, b := range lost {
		ids = append(ids, b.ID)
		if b.State != berth.StateTerminated || b.Reason != berth.ReasonLost {
			t.Errorf("returned %s: %s (%q), want terminated (lost)", b.ID, b.State, b.Reason)
		}
	}
	slices.Sort(ids)
	if want := []string{"bk_dead_1", "bk_dead_2"}; !slices.Equal(ids, want) {
		t.Fatalf("ExpireNodes moved %v, want %v", ids, want)
	}
	checkLost(t, s, "bk_dead_1")
	checkLost(t, s, "bk_dead_2")
	if _, err := s.KeyHolder(ctx, "doc-1"); !errors.Is(err, berth.ErrNotFound) {
		t.Errorf("KeyHolder of the lost backend's key: %v, want ErrNotFound (freed)", err)
	}
	if after, _ := s.Events(ctx, "bk_dead_done", 0); len(after) != len(doneBefore) {
		t.Errorf("the already terminated backend got %d more events", len(after)-len(doneBefore))
	}
	for _, id := range []string{"bk_live", "bk_local"} {
		if b := mustGet(t, s, id); b.State != berth.StateScheduled {
			t.Errorf("%s is %s, want untouched (scheduled)", id, b.State)
		}
	}
	if again, err := s.ExpireNodes(ctx); err != nil || len(again) != 0 {
		t.Errorf("ExpireNodes again = %v, %v; want nothing", again, err)
	}
	// The key moves on with a larger token.
	if h := mustCreate(t, s, onNode("bk_next", "doc-1", "node-live")); h.FencingToken <= mustGet(t, s, "bk_dead_1").FencingToken {
		t.Errorf("next holder's token %d, want > the lost one's", h.FencingToken)
	}
}

func testExpireNodesConcurrent(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustRegister(t, s, "node-dead", shortLease)
	const n = 20
	for i := range n {
		key := fmt.Sprintf("doc-%d", i)
		if i%4 == 0 {
			key = "" // keyless ones too
		}
		mustCreate(t, s, onNode(fmt.Sprintf("bk_%02d", i), key, "node-dead"))
	}
	waitOut()
	const callers = 6
	var (
		wg   sync.WaitGroup
		lost [callers][]*berth.Backend
		errs [callers]error
	)
	for i := range callers {
		wg.Go(func() { lost[i], errs[i] = s.ExpireNodes(ctx) })
	}
	wg.Wait()
	seen := map[string]int{}
	for i := range callers {
		if errs[i] != nil {
			t.Fatalf("ExpireNodes %d: %v", i, errs[i])
		}
		for _, b := range lost[i] {
			seen[b.ID]++
		}
	}
	for i := range n {
		id := fmt.Sprintf("bk_%02d", i)
		if seen[id] != 1 {
			t.Errorf("%s moved by %d calls, want exactly 1", id, seen[id])
		}
		checkLost(t, s, id)
	}
}

func testTakeKeyFromExpiredNode(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustRegister(t, s, "node-dead", shortLease)
	mustRegister(t, s, "node-live", longLease)
	old := mustCreate(t, s, onNode("bk_old", "doc-1", "node-dead"))
	mustTransition(t, s, "bk_old", berth.StateReady)
	// Held by a live node's backend: no takeover.
	mustCreate(t, s, onNode("bk_kept", "doc-2", "node-live"))
	waitOut()

	const n = 60
	var (
		wg      sync.WaitGroup
		holders [n]*berth.Backend
		created [n]bool
		errs    [n]error
	)
	for i := range n {
		wg.Go(func() {
			holders[i], created[i], errs[i] = s.CreateBackend(ctx, onNode(fmt.Sprintf("bk_new_%d", i), "doc-1", "node-live"))
		})
	}
	wg.Wait()
	winners := 0
	var winner string
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("caller %d: %v", i, errs[i])
		}
		if created[i] {
			winners++
			winner = holders[i].ID
		}
	}
	if winners != 1 {
		t.Fatalf("%d callers created a backend, want exactly 1", winners)
	}
	for i := range n {
		if holders[i].ID != winner {
			t.Errorf("caller %d sees holder %s, want %s", i, holders[i].ID, winner)
		}
	}
	w := mustGet(t, s, winner)
	if w.FencingToken <= old.FencingToken {
		t.Errorf("new holder's fencing token %d, want > %d", w.FencingToken, old.FencingToken)
	}
	checkLost(t, s, "bk_old")
	if h, err := s.KeyHolder(ctx, "doc-1"); err != nil || h.ID != winner {
		t.Errorf("KeyHolder = %v, %v; want %s", h, err, winner)
	}
	if bs, err := s.Backends(ctx, store.Filter{Key: "doc-1", Live: true}); err != nil || len(bs) != 1 {
		t.Errorf("%d live backends for the key (err %v), want 1", len(bs), err)
	}

	h, created1, err := s.CreateBackend(ctx, onNode("bk_other", "doc-2", "node-live"))
	if err != nil || created1 || h.ID != "bk_kept" {
		t.Errorf("CreateBackend on a live node's key = %v, created %v, %v; want bk_kept, not created", h, created1, err)
	}
}

// A node that comes back after its lease expired finds its old backends
// lost; one back within its lease keeps them.
func testRegisterAfterExpiry(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustRegister(t, s, "node-a", shortLease)
	mustRegister(t, s, "node-b", longLease)
	mustCreate(t, s, onNode("bk_a", "doc-1", "node-a"))
	mustCreate(t, s, onNode("bk_b", "doc-2", "node-b"))
	waitOut()

	if n := mustRegister(t, s, "node-a", longLease); n.Live != 0 {
		t.Errorf("node-a registered again with %d live backends, want 0", n.Live)
	}
	checkLost(t, s, "bk_a")
	if _, err := s.KeyHolder(ctx, "doc-1"); !errors.Is(err, berth.ErrNotFound) {
		t.Errorf("KeyHolder(doc-1): %v, want ErrNotFound (freed)", err)
	}
	if n := mustRegister(t, s, "node-b", longLease); n.Live != 1 {
		t.Errorf("node-b registered again within its lease with %d live backends, want 1", n.Live)
	}
	if b := mustGet(t, s, "bk_b"); b.State != berth.StateScheduled {
		t.Errorf("bk_b is %s after its node registered within its lease, want scheduled", b.State)
	}
}

// Takeovers, expiries, a node's own terminations and its return, all at
// once on the same keys: every call succeeds (no deadlock between the
// stores' locks) and each key ends with one live holder.
func testNodeRace(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustRegister(t, s, "node-dead", shortLease)
	mustRegister(t, s, "node-live", longLease)
	const keys = 8
	for i := range keys {
		mustCreate(t, s, onNode(fmt.Sprintf("bk_old_%d", i), fmt.Sprintf("doc-%d", i), "node-dead"))
	}
	waitOut()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	fail := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}
	for i := range keys {
		for j := range 4 {
			wg.Go(func() {
				if _, _, err := s.CreateBackend(ctx, onNode(fmt.Sprintf("bk_new_%d_%d", i, j), fmt.Sprintf("doc-%d", i), "node-live")); err != nil {
					fail(err)
				}
			})
		}
		wg.Go(func() {
			_, err := s.Transition(ctx, fmt.Sprintf("bk_old_%d", i), store.Transition{To: berth.StateTerminated, Reason: berth.ReasonRequested})
			if err != nil && !errors.Is(err, berth.ErrInvalidTransition) {
				fail(err)
			}
		})
	}
	for range 3 {
		wg.Go(func() {
			if _, err := s.ExpireNodes(ctx); err != nil {
				fail(err)
			}
		})
	}
	wg.Go(func() {
		if _, err := s.RegisterNode(ctx, newNode("node-dead"), longLease); err != nil {
			fail(err)
		}
	})
	wg.Wait()
	for _, err := range errs {
		t.Error(err)
	}
	for i := range keys {
		key := fmt.Sprintf("doc-%d", i)
		live, err := s.Backends(ctx, store.Filter{Key: key, Live: true})
		if err != nil || len(live) != 1 {
			t.Errorf("%s: %d live backends (err %v), want 1", key, len(live), err)
		}
		if b := mustGet(t, s, fmt.Sprintf("bk_old_%d", i)); b.State != berth.StateTerminated {
			t.Errorf("bk_old_%d is %s, want terminated", i, b.State)
		}
	}
}

func testFilterNode(t *testing.T, s store.Store) {
	ctx := t.Context()
	for i, node := range []string{"node-a", "node-b", "node-a", "node-a"} {
		b := onNode(fmt.Sprintf("bk_%d", i), fmt.Sprintf("doc-%d", i), node)
		b.CreatedAt = base.Add(time.Duration(i) * time.Second)
		mustCreate(t, s, b)
	}
	mustTransition(t, s, "bk_2", berth.StateReady)
	mustTransition(t, s, "bk_3", berth.StateTerminated)
	for _, tt := range []struct {
		f    store.Filter
		want []string
	}{
		{store.Filter{Node: "node-a"}, []string{"bk_3", "bk_2", "bk_0"}},
		{store.Filter{Node: "node-a", Live: true}, []string{"bk_2", "bk_0"}},
		{store.Filter{Node: "node-a", State: berth.StateScheduled}, []string{"bk_0"}},
		{store.Filter{Node: "node-a", State: berth.StateTerminated}, []string{"bk_3"}},
		{store.Filter{Node: "node-b"}, []string{"bk_1"}},
		{store.Filter{Node: "node-c"}, nil},
	} {
		bs, err := s.Backends(ctx, tt.f)
		if err != nil {
			t.Errorf("Backends(%+v): %v", tt.f, err)
			continue
		}
		var got []string
		for _, b := range bs {
			got = append(got, b.ID)
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("Backends(%+v) = %v, want %v", tt.f, got, tt.want)
		}
	}
}

// next reads one change, failing after a while.
func next(t *testing.T, ch <-chan store.Change) store.Change {
	t.Helper()
	select {
	case c, ok := <-ch:
		if !ok {
			t.Fatal("the feed closed")
		}
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("no change within 10s")
	}
	return store.Change{}
}

func testWatch(t *testing.T, s store.Store) {
	ctx, cancel := context.WithCancel(t.Context())
	ch, err := s.Watch(ctx)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	// A watcher that never reads must not hold up writers.
	if _, err := s.Watch(t.Context()); err != nil {
		t.Fatalf("Watch: %v", err)
	}
	mustRegister(t, s, "node-dead", shortLease)
	mustCreate(t, s, onNode("bk_1", "doc-1", "node-a"))
	mustTransition(t, s, "bk_1", berth.StateReady)
	mustCreate(t, s, onNode("bk_2", "", "node-dead"))
	waitOut()
	if lost, err := s.ExpireNodes(ctx); err != nil || len(lost) != 1 {
		t.Fatalf("ExpireNodes = %v, %v; want bk_2", lost, err)
	}
	mustTransition(t, s, "bk_1", berth.StateTerminated)

	want := []store.Change{
		{BackendID: "bk_1", Key: "doc-1", Node: "node-a", State: berth.StateScheduled},
		{BackendID: "bk_1", Key: "doc-1", Node: "node-a", State: berth.StateReady},
		{BackendID: "bk_2", Node: "node-dead", State: berth.StateScheduled},
		{BackendID: "bk_2", Node: "node-dead", State: berth.StateTerminated},
		{BackendID: "bk_1", Key: "doc-1", Node: "node-a", State: berth.StateTerminated},
	}
	events := map[string][]berth.Event{}
	for _, id := range []string{"bk_1", "bk_2"} {
		if events[id], err = s.Events(ctx, id, 0); err != nil {
			t.Fatal(err)
		}
	}
	for i, w := range want {
		got := next(t, ch)
		if got.Resync {
			t.Fatalf("change %d: Resync, with nothing missed", i)
		}
		// The seq is the event's.
		es := events[w.BackendID]
		j := slices.IndexFunc(es, func(e berth.Event) bool { return e.State == w.State })
		if j < 0 {
			t.Fatalf("no %s event of %s", w.State, w.BackendID)
		}
		w.Seq = es[j].Seq
		if got != w {
			t.Errorf("change %d = %+v, want %+v", i, got, w)
		}
	}
	cancel()
	for range ch { // closed once ctx ends; nothing more was written
		t.Error("a change after the last write")
	}
}
