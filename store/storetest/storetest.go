// Package storetest is the conformance suite every store.Store adapter
// passes. Adapters call Run from their own tests, against a real database.
//
// The suite checks the contract in store.Store's doc comments, chiefly the
// two rules Berth's correctness rests on: at most one live backend holds a
// key, and states only move forward — also across replicas, whose nodes
// hold their backends' keys by leases the database's clock judges.
package storetest

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/store"
)

// Run runs the suite. open must return a new, empty store each time it is
// called; the suite closes it when the subtest ends.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"CreateAndGet", testCreateAndGet},
		{"NotFound", testNotFound},
		{"KeyHeld", testKeyHeld},
		{"ConcurrentCreateOneKey", testConcurrentCreateOneKey},
		{"FencingIncreases", testFencingIncreases},
		{"KeylessBackends", testKeylessBackends},
		{"ForwardOnly", testForwardOnly},
		{"SkipAhead", testSkipAhead},
		{"TerminatedFreesKey", testTerminatedFreesKey},
		{"Events", testEvents},
		{"HandleAndLastActive", testHandleAndLastActive},
		{"BackendsFilter", testBackendsFilter},
		{"SpawnRoundTrip", testSpawnRoundTrip},
		{"ConcurrentTerminate", testConcurrentTerminate},
		{"Nodes", testNodes},
		{"LeaseExpires", testLeaseExpires},
		{"ExpireNodes", testExpireNodes},
		{"ExpireNodesConcurrent", testExpireNodesConcurrent},
		{"TakeKeyFromExpiredNode", testTakeKeyFromExpiredNode},
		{"RegisterAfterExpiry", testRegisterAfterExpiry},
		{"NodeRace", testNodeRace},
		{"FilterNode", testFilterNode},
		{"Watch", testWatch},
		{"Pools", testPools},
		{"ClaimBackend", testClaimBackend},
		{"ConcurrentClaims", testConcurrentClaims},
		{"PoolSurvivesRecords", testPoolColumn},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := open(t)
			t.Cleanup(func() {
				if err := s.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			tt.fn(t, s)
		})
	}
}

// RunReopen checks that fencing tokens keep growing across a close and
// reopen of the same database. Each call of open must open the same
// database; the suite closes every store it opens.
func RunReopen(t *testing.T, open func(t *testing.T) store.Store) {
	ctx := t.Context()
	var last int64
	for round := range 3 {
		s := open(t)
		for i := range 2 {
			b := newBackend(fmt.Sprintf("bk_reopen_%d_%d", round, i), "doc-reopen")
			got := mustCreate(t, s, b)
			if got.FencingToken <= last {
				t.Fatalf("round %d: fencing token %d, want > %d", round, got.FencingToken, last)
			}
			last = got.FencingToken
			if i == 0 {
				mustTransition(t, s, b.ID, berth.StateTerminated)
			}
		}
		if err := s.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		// The second backend of each round stays live across the reopen.
		s = open(t)
		h, err := s.KeyHolder(ctx, "doc-reopen")
		if err != nil || h.FencingToken != last {
			t.Fatalf("after reopen: KeyHolder = %v, %v; want token %d", h, err, last)
		}
		mustTransition(t, s, h.ID, berth.StateTerminated)
		if err := s.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
	}
}

// base is a fixed, non-UTC time with nanoseconds, so the suite checks that
// stores return UTC and keep at least microseconds.
var base = time.Date(2025, 3, 14, 15, 9, 26, 535897932, time.FixedZone("CET", 3600))

func newBackend(id, key string) *berth.Backend {
	idle := 60
	return &berth.Backend{
		ID:        id,
		Key:       key,
		User:      "alice",
		State:     berth.StateScheduled,
		Runtime:   "process",
		Spawn:     berth.SpawnConfig{Command: []string{"./server", "--port", "${PORT}"}, MaxIdleSeconds: &idle},
		Secret:    "secret-" + id,
		Node:      "node-1",
		CreatedAt: base,
	}
}

func mustCreate(t *testing.T, s store.Store, b *berth.Backend) *berth.Backend {
	t.Helper()
	h, created, err := s.CreateBackend(t.Context(), b)
	if err != nil {
		t.Fatalf("CreateBackend(%s): %v", b.ID, err)
	}
	if !created || h.ID != b.ID {
		t.Fatalf("CreateBackend(%s) = holder %s, created %v; want itself, created", b.ID, h.ID, created)
	}
	return h
}

func mustTransition(t *testing.T, s store.Store, id string, to berth.State) *berth.Backend {
	t.Helper()
	b, err := s.Transition(t.Context(), id, store.Transition{To: to, At: base.Add(time.Minute)})
	if err != nil {
		t.Fatalf("Transition(%s → %s): %v", id, to, err)
	}
	return b
}

func mustGet(t *testing.T, s store.Store, id string) *berth.Backend {
	t.Helper()
	b, err := s.Backend(t.Context(), id)
	if err != nil {
		t.Fatalf("Backend(%s): %v", id, err)
	}
	return b
}

// normalized is b as a store returns it: times in UTC, truncated to
// microseconds (the precision PostgreSQL keeps).
func normalized(b *berth.Backend) *berth.Backend {
	c := *b
	norm := func(t *time.Time) *time.Time {
		if t == nil {
			return nil
		}
		u := t.UTC().Truncate(time.Microsecond)
		return &u
	}
	c.CreatedAt = *norm(&c.CreatedAt)
	c.ReadyAt, c.TerminatedAt, c.LastActiveAt = norm(c.ReadyAt), norm(c.TerminatedAt), norm(c.LastActiveAt)
	if len(c.Handle) == 0 {
		c.Handle = nil
	}
	return &c
}

func checkBackend(t *testing.T, got, want *berth.Backend) {
	t.Helper()
	if g, w := normalized(got), normalized(want); !reflect.DeepEqual(g, w) {
		t.Errorf("backend %s:\n got %+v\nwant %+v", want.ID, g, w)
	}
	for name, tm := range map[string]*time.Time{"CreatedAt": &got.CreatedAt, "ReadyAt": got.ReadyAt,
		"TerminatedAt": got.TerminatedAt, "LastActiveAt": got.LastActiveAt} {
		if tm != nil && tm.Location() != time.UTC {
			t.Errorf("backend %s: %s in %v, want UTC", got.ID, name, tm.Location())
		}
	}
}

func testCreateAndGet(t *testing.T, s store.Store) {
	b := newBackend("bk_1", "doc-1")
	h := mustCreate(t, s, b)
	if h.State != berth.StateScheduled || h.FencingToken <= 0 {
		t.Errorf("created: state %s, fencing %d; want scheduled, > 0", h.State, h.FencingToken)
	}
	want := newBackend("bk_1", "doc-1")
	want.FencingToken = h.FencingToken
	checkBackend(t, mustGet(t, s, "bk_1"), want)
	checkBackend(t, h, want)

	got, err := s.KeyHolder(t.Context(), "doc-1")
	if err != nil {
		t.Fatalf("KeyHolder: %v", err)
	}
	checkBackend(t, got, want)

	if _, _, err := s.CreateBackend(t.Context(), newBackend("bk_1", "doc-other")); !errors.Is(err, berth.ErrConflict) {
		t.Errorf("CreateBackend with an existing id: %v, want ErrConflict", err)
	}
	// The failed create took nothing: the other key is still free.
	if _, err := s.KeyHolder(t.Context(), "doc-other"); !errors.Is(err, berth.ErrNotFound) {
		t.Errorf("KeyHolder(doc-other) after a failed create: %v, want ErrNotFound", err)
	}
}

func testNotFound(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustCreate(t, s, newBackend("bk_1", "doc-1"))
	checks := map[string]error{}
	_, checks["Backend"] = s.Backend(ctx, "bk_missing")
	_, checks["KeyHolder"] = s.KeyHolder(ctx, "doc-missing")
	_, checks["Transition"] = s.Transition(ctx, "bk_missing", store.Transition{To: berth.StateStarting})
	checks["SetHandle"] = s.SetHandle(ctx, "bk_missing", []byte("h"))
	checks["SetLastActive"] = s.SetLastActive(ctx, "bk_missing", base)
	for name, err := range checks {
		if !errors.Is(err, berth.ErrNotFound) {
			t.Errorf("%s of a missing backend: %v, want ErrNotFound", name, err)
		}
	}
	if es, err := s.Events(ctx, "bk_missing", 0); err != nil || len(es) != 0 {
		t.Errorf("Events of a missing backend = %v, %v; want none", es, err)
	}
}

func testKeyHeld(t *testing.T, s store.Store) {
	ctx := t.Context()
	first := mustCreate(t, s, newBackend("bk_1", "doc-1"))
	mustTransition(t, s, "bk_1", berth.StateReady)

	h, created, err := s.CreateBackend(ctx, newBackend("bk_2", "doc-1"))
	if err != nil {
		t.Fatalf("CreateBackend: %v", err)
	}
	if created || h.ID != "bk_1" || h.State != berth.StateReady || h.FencingToken != first.FencingToken {
		t.Errorf("CreateBackend on a held key = %s (%s, fencing %d), created %v; want bk_1 (ready, fencing %d), not created",
			h.ID, h.State, h.FencingToken, created, first.FencingToken)
	}
	if _, err := s.Backend(ctx, "bk_2"); !errors.Is(err, berth.ErrNotFound) {
		t.Errorf("the refused backend was written: Backend(bk_2) err = %v", err)
	}
	if h, err := s.KeyHolder(ctx, "doc-1"); err != nil || h.ID != "bk_1" {
		t.Errorf("KeyHolder = %v, %v; want bk_1", h, err)
	}
	// Another key is independent.
	mustCreate(t, s, newBackend("bk_3", "doc-2"))
}

func testConcurrentCreateOneKey(t *testing.T, s store.Store) {
	const n = 200
	var (
		wg      sync.WaitGroup
		ids     [n]string
		created [n]bool
		errs    [n]error
	)
	for i := range n {
		wg.Go(func() {
			h, c, err := s.CreateBackend(t.Context(), newBackend(fmt.Sprintf("bk_%d", i), "doc-race"))
			if err == nil {
				ids[i], created[i] = h.ID, c
			}
			errs[i] = err
		})
	}
	wg.Wait()
	winners := 0
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("caller %d: %v", i, errs[i])
		}
		if created[i] {
			winners++
		}
		if ids[i] != ids[0] {
			t.Errorf("caller %d sees holder %s, caller 0 sees %s", i, ids[i], ids[0])
		}
	}
	if winners != 1 {
		t.Errorf("%d callers created a backend, want exactly 1", winners)
	}
	if bs, err := s.Backends(t.Context(), store.Filter{Key: "doc-race"}); err != nil || len(bs) != 1 {
		t.Errorf("backends for the key: %d (err %v), want 1", len(bs), err)
	}
}

func testFencingIncreases(t *testing.T, s store.Store) {
	var last int64
	for i := range 6 {
		id := fmt.Sprintf("bk_%d", i)
		h := mustCreate(t, s, newBackend(id, "doc-1"))
		if h.FencingToken <= last {
			t.Fatalf("holder %d: fencing token %d, want > %d", i, h.FencingToken, last)
		}
		if got := mustGet(t, s, id).FencingToken; got != h.FencingToken {
			t.Errorf("holder %d: stored fencing token %d, returned %d", i, got, h.FencingToken)
		}
		last = h.FencingToken
		// Vary the path to terminated: it must not matter.
		if i%2 == 0 {
			mustTransition(t, s, id, berth.StateReady)
		}
		mustTransition(t, s, id, berth.StateTerminated)
	}
	// A holder of another key does not disturb this key's sequence.
	mustCreate(t, s, newBackend("bk_other", "doc-2"))
	if h := mustCreate(t, s, newBackend("bk_last", "doc-1")); h.FencingToken <= last {
		t.Errorf("fencing token %d after another key was taken, want > %d", h.FencingToken, last)
	}
}

func testKeylessBackends(t *testing.T, s store.Store) {
	for _, id := range []string{"bk_1", "bk_2", "bk_3"} {
		h := mustCreate(t, s, newBackend(id, ""))
		if h.FencingToken <= 0 {
			t.Errorf("%s: fencing token %d, want > 0", id, h.FencingToken)
		}
	}
	mustTransition(t, s, "bk_1", berth.StateTerminated)
	if got := mustGet(t, s, "bk_2"); got.Key != "" || got.State != berth.StateScheduled {
		t.Errorf("bk_2: key %q state %s; want no key, scheduled", got.Key, got.State)
	}
}

var states = []berth.State{berth.StateScheduled, berth.StateStarting, berth.StateReady, berth.StateTerminating, berth.StateTerminated}

func testForwardOnly(t *testing.T, s store.Store) {
	ctx := t.Context()
	for _, from := range states {
		for _, to := range append(slices.Clone(states), "bogus", "") {
			if to.Valid() && to.Rank() > from.Rank() {
				continue
			}
			id := fmt.Sprintf("bk_%s_%s", from, to)
			mustCreate(t, s, newBackend(id, "doc-"+id))
			if from != berth.StateScheduled {
				mustTransition(t, s, id, from)
			}
			before, _ := s.Events(ctx, id, 0)

			_, err := s.Transition(ctx, id, store.Transition{To: to, Reason: berth.ReasonCrashed})
			if !errors.Is(err, berth.ErrInvalidTransition) {
				t.Errorf("%s → %q: err %v, want ErrInvalidTransition", from, to, err)
			}
			if errors.Is(err, berth.ErrNotFound) {
				t.Errorf("%s → %q: err %v also matches ErrNotFound", from, to, err)
			}
			got := mustGet(t, s, id)
			if got.State != from || got.Reason != "" {
				t.Errorf("%s → %q refused, but backend is now %s (reason %q)", from, to, got.State, got.Reason)
			}
			if after, _ := s.Events(ctx, id, 0); len(after) != len(before) {
				t.Errorf("%s → %q refused, but %d events were appended", from, to, len(after)-len(before))
			}
		}
	}
}

func testSkipAhead(t *testing.T, s store.Store) {
	ctx := t.Context()
	for _, from := range states[:len(states)-1] {
		for _, to := range states[from.Rank():] {
			id := fmt.Sprintf("bk_%s_%s", from, to)
			mustCreate(t, s, newBackend(id, "doc-"+id))
			if from != berth.StateScheduled {
				mustTransition(t, s, id, from)
			}
			b, err := s.Transition(ctx, id, store.Transition{To: to, At: base.Add(time.Hour)})
			if err != nil {
				t.Errorf("%s → %s: %v", from, to, err)
				continue
			}
			if b.State != to {
				t.Errorf("%s → %s: returned state %s", from, to, b.State)
			}
		}
	}

	// The times and outcome of each step are kept.
	code := 3
	ready := base.Add(time.Second)
	done := base.Add(2 * time.Second)
	mustCreate(t, s, newBackend("bk_life", "doc-life"))
	b, err := s.Transition(ctx, "bk_life", store.Transition{To: berth.StateReady, At: ready})
	if err != nil {
		t.Fatal(err)
	}
	if b.ReadyAt == nil || !b.ReadyAt.Equal(ready.Truncate(time.Microsecond)) || b.TerminatedAt != nil {
		t.Errorf("after ready: ready_at %v, terminated_at %v; want %v, nil", b.ReadyAt, b.TerminatedAt, ready)
	}
	b, err = s.Transition(ctx, "bk_life", store.Transition{To: berth.StateTerminated, Reason: berth.ReasonExited, ExitCode: &code, At: done})
	if err != nil {
		t.Fatal(err)
	}
	want := newBackend("bk_life", "doc-life")
	want.State, want.Reason, want.ExitCode = berth.StateTerminated, berth.ReasonExited, &code
	want.FencingToken, want.ReadyAt, want.TerminatedAt = b.FencingToken, &ready, &done
	checkBackend(t, b, want)
	checkBackend(t, mustGet(t, s, "bk_life"), want)

	// A reason given when terminating survives a terminated without one.
	mustCreate(t, s, newBackend("bk_idle", "doc-idle"))
	if _, err := s.Transition(ctx, "bk_idle", store.Transition{To: berth.StateTerminating, Reason: berth.ReasonIdle}); err != nil {
		t.Fatal(err)
	}
	if b := mustTransition(t, s, "bk_idle", berth.StateTerminated); b.Reason != berth.ReasonIdle {
		t.Errorf("reason %q after terminating (idle) → terminated, want idle", b.Reason)
	}
}

func testTerminatedFreesKey(t *testing.T, s store.Store) {
	ctx := t.Context()
	first := mustCreate(t, s, newBackend("bk_1", "doc-1"))
	for i, st := range states[1:] {
		if st != berth.StateTerminated {
			mustTransition(t, s, "bk_1", st)
			h, created, err := s.CreateBackend(ctx, newBackend(fmt.Sprintf("bk_early_%d", i), "doc-1"))
			if err != nil || created || h.ID != "bk_1" {
				t.Fatalf("while bk_1 is %s: CreateBackend = %v, created %v, %v; want bk_1, not created", st, h, created, err)
			}
			if h, err := s.KeyHolder(ctx, "doc-1"); err != nil || h.ID != "bk_1" {
				t.Fatalf("while bk_1 is %s: KeyHolder = %v, %v; want bk_1", st, h, err)
			}
			continue
		}
		mustTransition(t, s, "bk_1", st)
	}
	if h, err := s.KeyHolder(ctx, "doc-1"); !errors.Is(err, berth.ErrNotFound) {
		t.Fatalf("after terminated: KeyHolder = %v, %v; want ErrNotFound", h, err)
	}
	if bs, err := s.Backends(ctx, store.Filter{Key: "doc-1", Live: true}); err != nil || len(bs) != 0 {
		t.Errorf("after terminated: %d live backends for the key (err %v), want 0", len(bs), err)
	}
	second := mustCreate(t, s, newBackend("bk_2", "doc-1"))
	if second.FencingToken <= first.FencingToken {
		t.Errorf("next holder's fencing token %d, want > %d", second.FencingToken, first.FencingToken)
	}
	if h, err := s.KeyHolder(ctx, "doc-1"); err != nil || h.ID != "bk_2" {
		t.Errorf("KeyHolder = %v, %v; want bk_2", h, err)
	}
}

func testEvents(t *testing.T, s store.Store) {
	ctx := t.Context()
	code := 137
	mustCreate(t, s, newBackend("bk_1", "doc-1"))
	mustCreate(t, s, newBackend("bk_other", "doc-2"))
	steps := []store.Transition{
		{To: berth.StateStarting, At: base.Add(1 * time.Second)},
		{To: berth.StateReady, At: base.Add(2 * time.Second)},
		{To: berth.StateTerminating, Reason: berth.ReasonIdle, Message: "idle for 5m0s", At: base.Add(3 * time.Second)},
		{To: berth.StateTerminated, Reason: berth.ReasonCrashed, ExitCode: &code, Message: "killed", At: base.Add(4 * time.Second)},
	}
	for _, st := range steps {
		if _, err := s.Transition(ctx, "bk_1", st); err != nil {
			t.Fatal(err)
		}
		mustTransition(t, s, "bk_other", st.To) // interleave another backend's history
	}

	es, err := s.Events(ctx, "bk_1", 0)
	if err != nil {
		t.Fatal(err)
	}
	want := []berth.Event{{BackendID: "bk_1", State: berth.StateScheduled, At: base}}
	for _, st := range steps {
		want = append(want, berth.Event{BackendID: "bk_1", State: st.To, Reason: st.Reason, ExitCode: st.ExitCode, Message: st.Message, At: st.At})
	}
	if len(es) != len(want) {
		t.Fatalf("got %d events, want %d: %+v", len(es), len(want), es)
	}
	for i := range es {
		if i > 0 && es[i].Seq <= es[i-1].Seq {
			t.Errorf("event %d: seq %d after %d, want increasing", i, es[i].Seq, es[i-1].Seq)
		}
		got := es[i]
		got.Seq = 0
		w := want[i]
		w.At = w.At.UTC().Truncate(time.Microsecond)
		if !reflect.DeepEqual(got, w) || got.At.Location() != time.UTC {
			t.Errorf("event %d:\n got %+v\nwant %+v", i, got, w)
		}
	}

	after, err := s.Events(ctx, "bk_1", es[1].Seq)
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(es)-2 || after[0].Seq != es[2].Seq {
		t.Errorf("Events after seq %d = %+v; want the last %d", es[1].Seq, after, len(es)-2)
	}
	if rest, err := s.Events(ctx, "bk_1", es[len(es)-1].Seq); err != nil || len(rest) != 0 {
		t.Errorf("Events after the last = %v, %v; want none", rest, err)
	}
}

func testHandleAndLastActive(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustCreate(t, s, newBackend("bk_1", "doc-1"))
	if got := mustGet(t, s, "bk_1"); got.Handle != nil || got.LastActiveAt != nil {
		t.Errorf("new backend: handle %q, last active %v; want none", got.Handle, got.LastActiveAt)
	}
	handle := []byte{0, 1, 2, 0xff, '{', '}'}
	if err := s.SetHandle(ctx, "bk_1", handle); err != nil {
		t.Fatal(err)
	}
	at := base.Add(90 * time.Second)
	if err := s.SetLastActive(ctx, "bk_1", at); err != nil {
		t.Fatal(err)
	}
	got := mustGet(t, s, "bk_1")
	if !slices.Equal(got.Handle, handle) {
		t.Errorf("handle %q, want %q", got.Handle, handle)
	}
	if got.LastActiveAt == nil || !got.LastActiveAt.Equal(at.Truncate(time.Microsecond)) || got.LastActiveAt.Location() != time.UTC {
		t.Errorf("last active %v, want %v in UTC", got.LastActiveAt, at)
	}
	// Both survive a transition, which rewrites the row.
	got = mustTransition(t, s, "bk_1", berth.StateReady)
	if !slices.Equal(got.Handle, handle) || got.LastActiveAt == nil {
		t.Errorf("after transition: handle %q, last active %v; want kept", got.Handle, got.LastActiveAt)
	}
	// A transition can record the last activity in the same step.
	later := base.Add(3 * time.Minute)
	if _, err := s.Transition(ctx, "bk_1", store.Transition{To: berth.StateTerminated, Reason: berth.ReasonIdle, LastActive: &later}); err != nil {
		t.Fatal(err)
	}
	if got := mustGet(t, s, "bk_1"); got.LastActiveAt == nil || !got.LastActiveAt.Equal(later.Truncate(time.Microsecond)) {
		t.Errorf("last active after a transition that set it: %v, want %v", got.LastActiveAt, later)
	}

	// A transition can record the handle in the same step; a refused one
	// records nothing, and one without a handle keeps it.
	mustCreate(t, s, newBackend("bk_2", "doc-2"))
	started := []byte(`{"pid":7}`)
	b, err := s.Transition(ctx, "bk_2", store.Transition{To: berth.StateStarting, Handle: started})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(b.Handle, started) {
		t.Errorf("returned handle %q after a transition that set it, want %q", b.Handle, started)
	}
	if _, err := s.Transition(ctx, "bk_2", store.Transition{To: berth.StateStarting, Handle: []byte("other")}); !errors.Is(err, berth.ErrInvalidTransition) {
		t.Fatalf("repeated transition: %v, want ErrInvalidTransition", err)
	}
	mustTransition(t, s, "bk_2", berth.StateReady)
	if got := mustGet(t, s, "bk_2"); !slices.Equal(got.Handle, started) {
		t.Errorf("handle %q, want %q: set by the transition to starting, kept since", got.Handle, started)
	}
}

func testBackendsFilter(t *testing.T, s store.Store) {
	ctx := t.Context()
	// Created a second apart, bk_0 oldest.
	keys := []string{"doc-a", "doc-b", "doc-a", "doc-c", "doc-a", ""}
	for i, key := range keys {
		b := newBackend(fmt.Sprintf("bk_%d", i), key)
		b.CreatedAt = base.Add(time.Duration(i) * time.Second)
		mustCreate(t, s, b)
		switch i {
		case 0, 2:
			mustTransition(t, s, b.ID, berth.StateTerminated)
		case 3:
			mustTransition(t, s, b.ID, berth.StateReady)
		}
	}
	for _, tt := range []struct {
		f    store.Filter
		want []string
	}{
		{store.Filter{}, []string{"bk_5", "bk_4", "bk_3", "bk_2", "bk_1", "bk_0"}},
		{store.Filter{Key: "doc-a"}, []string{"bk_4", "bk_2", "bk_0"}},
		{store.Filter{Key: "doc-a", Live: true}, []string{"bk_4"}},
		{store.Filter{Live: true}, []string{"bk_5", "bk_4", "bk_3", "bk_1"}},
		{store.Filter{State: berth.StateTerminated}, []string{"bk_2", "bk_0"}},
		{store.Filter{State: berth.StateReady}, []string{"bk_3"}},
		{store.Filter{State: berth.StateStarting}, nil},
		{store.Filter{Key: "doc-missing"}, nil},
		{store.Filter{Limit: 2}, []string{"bk_5", "bk_4"}},
		{store.Filter{Key: "doc-a", Limit: 2}, []string{"bk_4", "bk_2"}},
		{store.Filter{Live: true, Limit: 3}, []string{"bk_5", "bk_4", "bk_3"}},
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
	// Listed backends are complete, not just ids.
	bs, err := s.Backends(ctx, store.Filter{Key: "doc-c"})
	if err != nil || len(bs) != 1 {
		t.Fatalf("Backends(doc-c) = %v, %v", bs, err)
	}
	checkBackend(t, bs[0], mustGet(t, s, "bk_3"))
}

func testSpawnRoundTrip(t *testing.T, s store.Store) {
	idle, grace, code := 0, 30, -1
	ready, active := base.Add(time.Second), base.Add(time.Minute)
	b := &berth.Backend{
		ID:      "bk_full",
		Key:     "org/doc:42@v1",
		User:    "bob",
		State:   berth.StateScheduled,
		Runtime: "docker",
		Spawn: berth.SpawnConfig{
			Image:                 "ghcr.io/acme/app:1",
			Command:               []string{"./server", "--port=${PORT}", "with space", "ünïcode"},
			Env:                   map[string]string{"A": "1", "EMPTY": "", "MULTI": "line1\nline2"},
			MaxIdleSeconds:        &idle,
			LifetimeSeconds:       3600,
			GraceSeconds:          &grace,
			StartupTimeoutSeconds: 120,
			StopSignal:            "SIGINT",
			PullPolicy:            "always",
			Resources:             berth.Resources{CPUMillis: 500, MemoryMB: 256, Pids: 64},
			State:                 berth.StateConfig{Mode: berth.StateModeDir, SaveIntervalSeconds: 15},
			ReadOnlyRootFS:        true,
		},
		Secret:       "s3cr3t",
		Handle:       []byte(`{"pid":42}`),
		Node:         "node-7",
		CreatedAt:    base,
		ExitCode:     &code,
		ReadyAt:      &ready,
		LastActiveAt: &active,
	}
	want := *b
	want.FencingToken = mustCreate(t, s, b).FencingToken
	checkBackend(t, mustGet(t, s, "bk_full"), &want)
}

func testConcurrentTerminate(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustCreate(t, s, newBackend("bk_1", "doc-1"))
	mustTransition(t, s, "bk_1", berth.StateReady)
	const n = 50
	var (
		wg   sync.WaitGroup
		errs [n]error
	)
	for i := range n {
		wg.Go(func() {
			_, errs[i] = s.Transition(ctx, "bk_1", store.Transition{
				To: berth.StateTerminated, Reason: berth.ReasonRequested, Message: fmt.Sprint(i)})
		})
	}
	wg.Wait()
	ok := 0
	for i, err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, berth.ErrInvalidTransition):
			t.Errorf("caller %d: %v, want nil or ErrInvalidTransition", i, err)
		}
	}
	if ok != 1 {
		t.Errorf("%d callers terminated the backend, want exactly 1", ok)
	}
	es, err := s.Events(ctx, "bk_1", 0)
	if err != nil {
		t.Fatal(err)
	}
	terminated := 0
	for _, e := range es {
		if e.State == berth.StateTerminated {
			terminated++
		}
	}
	if terminated != 1 {
		t.Errorf("%d terminated events, want 1", terminated)
	}
	if _, err := s.KeyHolder(ctx, "doc-1"); !errors.Is(err, berth.ErrNotFound) {
		t.Errorf("KeyHolder after terminate: %v, want ErrNotFound", err)
	}
}
