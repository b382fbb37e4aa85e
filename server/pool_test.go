package server

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
	"github.com/berthhq/berth/runtime/runtimetest"
	"github.com/berthhq/berth/store"
	"github.com/berthhq/berth/store/sqlite"
)

func waitPoolReady(t *testing.T, m *Manager, name string, n int) *api.Pool {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		p, err := m.Pool(t.Context(), name)
		if err != nil {
			t.Fatal(err)
		}
		if p.Ready == n && p.Starting == 0 {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("pool %s: %+v; want %d ready", name, p, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Concurrent connects for new keys (run with -race): each key gets its own
// backend, at most the ready ones are claimed, the pool refills, and a
// shutdown while it refills stops everything.
func TestManager_PoolClaims(t *testing.T) {
	bin := runtimetest.BuildTestBackend(t)
	m := newProcessManager(t, nil)
	tmpl := berth.SpawnConfig{Command: []string{bin}}
	if err := m.StartPools(t.Context(), []berth.Pool{{Name: "p", Spawn: tmpl, MinReady: 2}}); err != nil {
		t.Fatal(err)
	}
	waitPoolReady(t, m, "p", 2)

	const n = 8
	resps := make([]*api.ConnectResponse, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			spawn := tmpl // the template: a claim as by name
			r, err := m.Connect(t.Context(), &api.ConnectRequest{Key: fmt.Sprintf("k%d", i), Spawn: &spawn, Wait: true})
			if err != nil {
				t.Errorf("connect k%d: %v", i, err)
				return
			}
			resps[i] = r
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	ids, claimed := map[string]bool{}, 0
	for i, r := range resps {
		if ids[r.BackendID] || r.Key != fmt.Sprintf("k%d", i) || r.State != berth.StateReady {
			t.Errorf("k%d: %+v; want a ready backend of its own", i, r)
		}
		ids[r.BackendID] = true
		if r.Pool == "p" {
			claimed++
		}
	}
	if claimed < 2 {
		t.Errorf("%d connects claimed a pooled backend; want at least the 2 that were ready", claimed)
	}
	for i, r := range resps {
		b, err := m.Backend(t.Context(), r.BackendID)
		if err != nil || b.Key != fmt.Sprintf("k%d", i) {
			t.Errorf("record of %s: %+v, %v", r.BackendID, b, err)
		}
	}
	p := waitPoolReady(t, m, "p", 2)
	if p.Claimed != claimed {
		t.Errorf("pool says %d claimed; connects %d", p.Claimed, claimed)
	}
	// Shut down while the pool is refilling after one more claim.
	spawn := tmpl
	if _, err := m.Connect(t.Context(), &api.ConnectRequest{Key: "last", Spawn: &spawn}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := m.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if n := m.LiveCount(); n != 0 {
		t.Errorf("%d backends live after shutdown", n)
	}
}

// A backend that refuses its claim is stopped, and the connect is served
// by the next one or cold; the key ends up with exactly one live backend.
func TestManager_PoolClaimRefused(t *testing.T) {
	bin := runtimetest.BuildTestBackend(t)
	m := newProcessManager(t, nil)
	tmpl := berth.SpawnConfig{Command: []string{bin}, Env: map[string]string{"TB_CLAIM_FAIL": "1"}}
	if err := m.StartPools(t.Context(), []berth.Pool{{Name: "bad", Spawn: tmpl, MinReady: 2}}); err != nil {
		t.Fatal(err)
	}
	waitPoolReady(t, m, "bad", 2)
	r, err := m.Connect(t.Context(), &api.ConnectRequest{Key: "k", Pool: "bad", Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	if r.Pool != "" || r.State != berth.StateReady {
		t.Errorf("connect = %+v; want a ready cold backend", r)
	}
	live, err := m.Backends(t.Context(), storeFilterKey("k"))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, b := range live {
		if b.State.Live() {
			n++
		}
	}
	if n != 1 {
		t.Errorf("key k has %d live backends; want 1", n)
	}
}

func storeFilterKey(key string) store.Filter { return store.Filter{Key: key} }

// failingClaims is a store whose claims fail, as a commit that errs: the
// claim's head has gone out to the backend by then.
type failingClaims struct {
	*sqlite.Store
	calls atomic.Int32
}

func (s *failingClaims) ClaimBackend(ctx context.Context, id, key, user string) (*berth.Backend, bool, error) {
	s.calls.Add(1)
	time.Sleep(50 * time.Millisecond) // the backend reads the claim's start meanwhile
	return nil, false, errors.New("disk I/O error")
}

// A claim whose store write fails stops the backend, which never learned
// the key (its claim was cut off before it), and the pool refills.
func TestManager_PoolClaimNotRecorded(t *testing.T) {
	bin := runtimetest.BuildTestBackend(t)
	var st *failingClaims
	m := newProcessManager(t, func(s store.Store) store.Store {
		st = &failingClaims{Store: s.(*sqlite.Store)}
		return st
	})
	audit := filepath.Join(t.TempDir(), "audit.log")
	tmpl := berth.SpawnConfig{Command: []string{bin}, Env: map[string]string{"TB_AUDIT_FILE": audit}}
	if err := m.StartPools(t.Context(), []berth.Pool{{Name: "p", Spawn: tmpl, MinReady: 1}}); err != nil {
		t.Fatal(err)
	}
	waitPoolReady(t, m, "p", 1)
	before, err := m.Backends(t.Context(), store.Filter{Live: true})
	if err != nil || len(before) != 1 {
		t.Fatalf("live backends: %v, %v; want the pooled one", before, err)
	}
	taken := before[0].ID

	if _, err := m.Connect(t.Context(), &api.ConnectRequest{Key: "k", Pool: "p"}); err == nil {
		t.Fatal("connect succeeded with a store that cannot record a claim")
	}
	if st.calls.Load() != 1 {
		t.Fatalf("%d claims tried; want 1", st.calls.Load())
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := m.Backend(t.Context(), taken)
		if err != nil {
			t.Fatal(err)
		}
		if b.State == berth.StateTerminated {
			if b.Key != "" {
				t.Errorf("the stopped backend has key %q; want none", b.Key)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the backend whose claim was not recorded is %s 30 s later; want terminated", b.State)
		}
		time.Sleep(10 * time.Millisecond)
	}
	data, err := os.ReadFile(audit)
	if err != nil || !strings.Contains(string(data), "tb-audit stop") {
		t.Fatalf("the backend's audit: %q, %v; want its start and stop", data, err)
	}
	if strings.Contains(string(data), "claimed") {
		t.Errorf("a backend took a claim that was not recorded:\n%s", data)
	}
	waitPoolReady(t, m, "p", 1)
}

// A claim the store refuses because another node's backend holds the key
// goes back to the pool unclaimed, with a new connection for its next
// claim (the one its cut-off claim used is gone).
func TestManager_PoolClaimKeyHeldElsewhere(t *testing.T) {
	bin := runtimetest.BuildTestBackend(t)
	m := newProcessManager(t, nil)
	audit := filepath.Join(t.TempDir(), "audit.log")
	tmpl := berth.SpawnConfig{Command: []string{bin}, Env: map[string]string{"TB_AUDIT_FILE": audit}}
	if err := m.StartPools(t.Context(), []berth.Pool{{Name: "p", Spawn: tmpl, MinReady: 1}}); err != nil {
		t.Fatal(err)
	}
	waitPoolReady(t, m, "p", 1)
	other := &berth.Backend{ID: "bk_other", Key: "k", Node: "other", Runtime: "process", Secret: "x", Spawn: tmpl, CreatedAt: time.Now()}
	if _, created, err := m.cfg.Store.CreateBackend(t.Context(), other); err != nil || !created {
		t.Fatalf("record another node's holder: %v, %v", created, err)
	}
	m.pools.mu.Lock()
	pooled := m.pools.byName["p"].ready[0]
	first := m.pools.conns[pooled.id]
	m.pools.mu.Unlock()
	if first == nil {
		t.Fatal("a ready pooled backend has no connection kept for its claim")
	}

	// One node alone refuses a key another node holds; the claim was
	// tried first.
	if _, err := m.Connect(t.Context(), &api.ConnectRequest{Key: "k", Pool: "p"}); err == nil {
		t.Fatalf("connect for a key another node holds succeeded")
	}
	if p := waitPoolReady(t, m, "p", 1); p.Claimed != 0 {
		t.Errorf("pool: %+v; want the backend back, unclaimed", p)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		m.pools.mu.Lock()
		c := m.pools.conns[pooled.id]
		m.pools.mu.Unlock()
		if c != nil && c != first {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no connection kept for the put-back backend's next claim")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if b := pooled.snapshot(); b.Key != "" || b.State != berth.StateReady {
		t.Errorf("the put-back backend: key %q, %s; want none, ready", b.Key, b.State)
	}
	if data, _ := os.ReadFile(audit); strings.Contains(string(data), "claimed") {
		t.Errorf("the backend took a claim the store refused:\n%s", data)
	}
}

// A pool's template is chosen a runtime as a connect's spawn is: one this
// server cannot run is refused when put, naming the field, and is never
// stored; at start (--pools) it fails the start.
func TestManager_PoolRuntimeRefused(t *testing.T) {
	m := newProcessManager(t, nil)
	if err := m.StartPools(t.Context(), []berth.Pool{{Name: "img", Spawn: berth.SpawnConfig{Image: "app:1"}, MinReady: 1}}); err == nil {
		t.Fatal("StartPools with a template no runtime here runs: no error")
	} else if !strings.Contains(err.Error(), `pool "img"`) {
		t.Errorf("StartPools: %v; want it to name the pool", err)
	}
	if err := m.StartPools(t.Context(), nil); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name  string
		spawn berth.SpawnConfig
		field string
	}{
		{"image without a container runtime", berth.SpawnConfig{Image: "app:1"}, "spawn.image"},
		{"named runtime not run here", berth.SpawnConfig{Command: []string{"x"}, Runtime: "docker"}, "spawn.runtime"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := m.PutPool(t.Context(), &berth.Pool{Name: "p", Spawn: tt.spawn, MinReady: 1})
			var fe *berth.FieldError
			if !errors.As(err, &fe) || fe.Field != tt.field {
				t.Fatalf("PutPool: %v; want a FieldError on %s", err, tt.field)
			}
			if _, err := m.Pool(t.Context(), "p"); !errors.Is(err, berth.ErrNotFound) {
				t.Errorf("the refused pool: %v; want not found", err)
			}
		})
	}
	// Freezing on a runtime that cannot is not refused for a pool: its
	// claimed backends stop when idle instead (DESIGN.md, "Frozen backends").
	m = newProcessManager(t, nil)
	m.cfg.Runtimes["process"] = noFreezer{m.cfg.Runtimes["process"]} // before the pools' keeper reads it
	if err := m.StartPools(t.Context(), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := m.PutPool(t.Context(), &berth.Pool{Name: "fz", Spawn: berth.SpawnConfig{Command: []string{"x"}, IdleAction: berth.IdleFreeze}}); err != nil {
		t.Errorf("PutPool of a template asking a runtime that cannot freeze to freeze: %v; want it accepted", err)
	}
}
