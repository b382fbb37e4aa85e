package storetest

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/store"
)

// pools returns s's store.Pools: every adapter must offer it.
func pools(t *testing.T, s store.Store) store.Pools {
	t.Helper()
	p, ok := s.(store.Pools)
	if !ok {
		t.Fatalf("%T does not implement store.Pools", s)
	}
	return p
}

func testPools(t *testing.T, s store.Store) {
	ctx := t.Context()
	ps := pools(t, s)
	if _, err := ps.Pool(ctx, "web"); !errors.Is(err, berth.ErrNotFound) {
		t.Errorf("Pool of none: err = %v; want ErrNotFound", err)
	}
	if err := ps.DeletePool(ctx, "web"); !errors.Is(err, berth.ErrNotFound) {
		t.Errorf("DeletePool of none: err = %v; want ErrNotFound", err)
	}
	web := &berth.Pool{Name: "web", Spawn: newBackend("x", "").Spawn, MinReady: 3, Max: 10,
		Schedule: []berth.PoolWindow{{Days: []string{"mon", "fri"}, From: "08:00", To: "18:30", MinReady: 8}, {From: "22:00", To: "02:00"}}}
	web.Spawn.State.Mode = berth.StateModeBlob
	if err := ps.PutPool(ctx, web); err != nil {
		t.Fatal(err)
	}
	if web.CreatedAt.IsZero() || !web.CreatedAt.Equal(web.UpdatedAt) {
		t.Errorf("new pool: created %v updated %v; want both set and equal", web.CreatedAt, web.UpdatedAt)
	}
	lsp := &berth.Pool{Name: "lsp", Spawn: berth.SpawnConfig{Image: "lsp:1", Env: map[string]string{"A": "b"}}, MinReady: 1}
	if err := ps.PutPool(ctx, lsp); err != nil {
		t.Fatal(err)
	}
	got, err := ps.Pool(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != "web" || got.MinReady != 3 || got.Max != 10 || !berth.SameSpawn(&got.Spawn, &web.Spawn) ||
		!got.CreatedAt.Equal(web.CreatedAt) || !reflect.DeepEqual(got.Schedule, web.Schedule) {
		t.Errorf("Pool(web) = %+v; want %+v", got, web)
	}
	// Replacing keeps the creation time and changes the rest.
	created := web.CreatedAt
	web2 := &berth.Pool{Name: "web", Spawn: lsp.Spawn, MinReady: 5}
	if err := ps.PutPool(ctx, web2); err != nil {
		t.Fatal(err)
	}
	if !web2.CreatedAt.Equal(created) || web2.UpdatedAt.Before(created) {
		t.Errorf("replaced pool: created %v (want %v) updated %v", web2.CreatedAt, created, web2.UpdatedAt)
	}
	if got, _ := ps.Pool(ctx, "web"); got == nil || got.Schedule != nil {
		t.Errorf("replaced pool without a schedule: %+v; want none", got)
	}
	all, err := ps.Pools(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range all {
		names = append(names, fmt.Sprintf("%s/%d/%d/%s", p.Name, p.MinReady, p.Max, p.Spawn.Image))
	}
	if want := "lsp/1/0/lsp:1 web/5/0/lsp:1"; strings.Join(names, " ") != want {
		t.Errorf("Pools = %v; want %s", names, want)
	}
	if err := ps.DeletePool(ctx, "lsp"); err != nil {
		t.Fatal(err)
	}
	if _, err := ps.Pool(ctx, "lsp"); !errors.Is(err, berth.ErrNotFound) {
		t.Errorf("Pool after delete: err = %v; want ErrNotFound", err)
	}
	if all, _ := ps.Pools(ctx); len(all) != 1 {
		t.Errorf("Pools after delete: %d; want 1", len(all))
	}
}

// pooled records a ready backend of pool "web" with no key.
func pooled(t *testing.T, s store.Store, id string) *berth.Backend {
	t.Helper()
	b := newBackend(id, "")
	b.Pool = "web"
	mustCreate(t, s, b)
	mustTransition(t, s, id, berth.StateStarting)
	return mustTransition(t, s, id, berth.StateReady)
}

func testPoolColumn(t *testing.T, s store.Store) {
	ctx := t.Context()
	b := pooled(t, s, "bk_p")
	if b.Pool != "web" || b.Key != "" {
		t.Errorf("transitioned: pool %q key %q; want web, none", b.Pool, b.Key)
	}
	if got := mustGet(t, s, "bk_p"); got.Pool != "web" {
		t.Errorf("Backend: pool %q; want web", got.Pool)
	}
	bs, err := s.Backends(ctx, store.Filter{Live: true})
	if err != nil || len(bs) != 1 || bs[0].Pool != "web" {
		t.Errorf("Backends = %v, %v; want bk_p of pool web", bs, err)
	}
}

func testClaimBackend(t *testing.T, s store.Store) {
	ctx := t.Context()
	ps := pools(t, s)
	// An earlier holder of the key: a claim must fence past it.
	mustCreate(t, s, newBackend("bk_old", "doc"))
	mustTransition(t, s, "bk_old", berth.StateTerminated)
	pooled(t, s, "bk_1")
	pooled(t, s, "bk_2")

	b, claimed, err := ps.ClaimBackend(ctx, "bk_1", "doc", "bob")
	if err != nil || !claimed {
		t.Fatalf("ClaimBackend = %v, %v; want claimed", claimed, err)
	}
	if b.ID != "bk_1" || b.Key != "doc" || b.User != "bob" || b.FencingToken != 2 || b.State != berth.StateReady || b.Pool != "web" {
		t.Errorf("claimed = %+v; want bk_1, key doc, user bob, fence 2, ready, pool web", b)
	}
	if h, err := s.KeyHolder(ctx, "doc"); err != nil || h.ID != "bk_1" {
		t.Errorf("KeyHolder(doc) = %v, %v; want bk_1", h, err)
	}
	if got := mustGet(t, s, "bk_1"); got.Key != "doc" || got.FencingToken != 2 {
		t.Errorf("Backend(bk_1): key %q fence %d; want doc, 2", got.Key, got.FencingToken)
	}
	es, _ := s.Events(ctx, "bk_1", 0)
	if last := es[len(es)-1]; last.State != berth.StateReady || !strings.Contains(last.Message, "claimed") {
		t.Errorf("last event = %+v; want a claim note in state ready", last)
	}

	// The key is held: another pooled backend is not given it.
	h, claimed, err := ps.ClaimBackend(ctx, "bk_2", "doc", "carol")
	if err != nil || claimed || h == nil || h.ID != "bk_1" {
		t.Errorf("claim of a held key = %v, %v, %v; want holder bk_1, not claimed", h, claimed, err)
	}
	if got := mustGet(t, s, "bk_2"); got.Key != "" || got.FencingToken != 1 {
		t.Errorf("bk_2 after a refused claim: key %q fence %d; want none, 1", got.Key, got.FencingToken)
	}
	// A claimed backend is not claimed again, for any key.
	if _, _, err := ps.ClaimBackend(ctx, "bk_1", "other", ""); !errors.Is(err, berth.ErrInvalidTransition) {
		t.Errorf("second claim of bk_1: err = %v; want ErrInvalidTransition", err)
	}
	if _, err := s.KeyHolder(ctx, "other"); !errors.Is(err, berth.ErrNotFound) {
		t.Errorf("a refused claim took key other: %v", err)
	}
	// Nor is a backend no pool started, nor an unknown one.
	mustCreate(t, s, newBackend("bk_plain", ""))
	if _, _, err := ps.ClaimBackend(ctx, "bk_plain", "k2", ""); !errors.Is(err, berth.ErrInvalidTransition) {
		t.Errorf("claim of a backend of no pool: err = %v; want ErrInvalidTransition", err)
	}
	if _, _, err := ps.ClaimBackend(ctx, "bk_none", "k3", ""); !errors.Is(err, berth.ErrNotFound) {
		t.Errorf("claim of an unknown backend: err = %v; want ErrNotFound", err)
	}
	// Nor one that is stopping.
	mustTransition(t, s, "bk_2", berth.StateTerminating)
	if _, _, err := ps.ClaimBackend(ctx, "bk_2", "k4", ""); !errors.Is(err, berth.ErrInvalidTransition) {
		t.Errorf("claim of a terminating backend: err = %v; want ErrInvalidTransition", err)
	}
	if _, err := s.KeyHolder(ctx, "k4"); !errors.Is(err, berth.ErrNotFound) {
		t.Errorf("a refused claim took key k4: %v", err)
	}
	// A claimed backend's end frees its key, and the next holder fences past it.
	mustTransition(t, s, "bk_1", berth.StateTerminated)
	next := mustCreate(t, s, newBackend("bk_next", "doc"))
	if next.FencingToken != 3 {
		t.Errorf("next holder's fence = %d; want 3", next.FencingToken)
	}
}

func testConcurrentClaims(t *testing.T, s store.Store) {
	ctx := t.Context()
	ps := pools(t, s)
	const n = 8
	for i := range n {
		pooled(t, s, fmt.Sprintf("bk_%d", i))
	}
	// n pooled backends race for one key: exactly one gets it.
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		winners []string
	)
	for i := range n {
		wg.Go(func() {
			id := fmt.Sprintf("bk_%d", i)
			_, claimed, err := ps.ClaimBackend(ctx, id, "doc", "")
			if err != nil {
				t.Errorf("claim %s: %v", id, err)
			}
			if claimed {
				mu.Lock()
				winners = append(winners, id)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(winners) != 1 {
		t.Fatalf("claims of one key by %d backends: %v won; want exactly one", n, winners)
	}
	// n keys race for one pooled backend: exactly one key gets it.
	free := "bk_0"
	if winners[0] == free {
		free = "bk_1"
	}
	var keys []string
	for i := range n {
		wg.Go(func() {
			key := fmt.Sprintf("k%d", i)
			_, claimed, err := ps.ClaimBackend(ctx, free, key, "")
			if err != nil && !errors.Is(err, berth.ErrInvalidTransition) {
				t.Errorf("claim for %s: %v", key, err)
			}
			if claimed {
				mu.Lock()
				keys = append(keys, key)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(keys) != 1 {
		t.Fatalf("claims of %s for %d keys: %v won; want exactly one", free, n, keys)
	}
	for i := range n {
		key := fmt.Sprintf("k%d", i)
		h, err := s.KeyHolder(ctx, key)
		if key == keys[0] {
			if err != nil || h.ID != free {
				t.Errorf("KeyHolder(%s) = %v, %v; want %s", key, h, err, free)
			}
		} else if !errors.Is(err, berth.ErrNotFound) {
			t.Errorf("KeyHolder(%s) = %v, %v; a losing claim must take no key", key, h, err)
		}
	}
}
