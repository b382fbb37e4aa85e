package server

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
	"github.com/berthhq/berth/logs"
	"github.com/berthhq/berth/runtime"
	"github.com/berthhq/berth/runtime/process"
	"github.com/berthhq/berth/runtime/runtimetest"
	"github.com/berthhq/berth/store"
	"github.com/berthhq/berth/store/sqlite"
	"github.com/berthhq/berth/token"
)

// A client can see a backend answer, through the route its probe opens,
// and stop it before ready is recorded; or the stop can come between the
// probe's answer and the route. The history must still read scheduled,
// starting, ready, terminating, terminated.
func TestManager_StopRightAfterAnswer(t *testing.T) {
	bin := runtimetest.BuildTestBackend(t)
	m := newProcessManager(t, nil)
	// The stop arrives after the probe's answer, before the route opens
	// and before the lifecycle saw the answer.
	testHookAnswered = func(inst *instance) {
		m.Terminate(t.Context(), inst.id, true)
		time.Sleep(20 * time.Millisecond)
	}
	t.Cleanup(func() { testHookAnswered = nil })

	res, err := m.Connect(t.Context(), &api.ConnectRequest{Key: "early-stop", Spawn: &berth.SpawnConfig{Command: []string{bin}}})
	if err != nil {
		t.Fatal(err)
	}
	waitTerminated(t, m, res.BackendID)
	events, err := m.Events(t.Context(), res.BackendID, 0)
	if err != nil {
		t.Fatal(err)
	}
	var states []berth.State
	for _, e := range events {
		states = append(states, e.State)
	}
	want := []berth.State{berth.StateScheduled, berth.StateStarting, berth.StateReady, berth.StateTerminating, berth.StateTerminated}
	if len(states) != len(want) {
		t.Fatalf("history %v, want %v", states, want)
	}
	for i := range want {
		if states[i] != want[i] {
			t.Fatalf("history %v, want %v", states, want)
		}
	}
}

// waitTerminated polls m until backend id is terminated and returns it.
func waitTerminated(t *testing.T, m *Manager, id string) *berth.Backend {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := m.Backend(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		if b.State == berth.StateTerminated {
			return b
		}
		if time.Now().After(deadline) {
			t.Fatalf("backend %s is still %s", id, b.State)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// newProcessManager is a Manager on a new SQLite store (passed through
// wrap, if set) and the process runtime, shut down when tb ends.
func newProcessManager(tb testing.TB, wrap func(store.Store) store.Store) *Manager {
	tb.Helper()
	st, err := sqlite.Open(filepath.Join(tb.TempDir(), "berth.db"))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { st.Close() })
	rt, err := process.New(process.Config{Dir: tb.TempDir()})
	if err != nil {
		tb.Fatal(err)
	}
	signer, err := token.NewSigner(bytes.Repeat([]byte("k"), token.MinKeyLen))
	if err != nil {
		tb.Fatal(err)
	}
	var s store.Store = st
	if wrap != nil {
		s = wrap(st)
	}
	m, err := New(Config{
		Store:    s,
		Runtimes: map[string]runtime.Runtime{"process": rt},
		Logs:     logs.New(logs.Config{}),
		Signer:   signer,
		FreePort: process.FreePort,
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { m.Shutdown(context.Background()) })
	if err := m.Reconcile(context.Background()); err != nil {
		tb.Fatal(err)
	}
	return m
}

// A backend's secret is 48 characters: `berth bench` gives nginx a stand-in
// X-Berth-Secret of that length (bench.secretLen), so that the backend
// parses the same head behind both proxies.
func TestNewSecret_Length(t *testing.T) {
	if s := newSecret(); len(s) != 48 {
		t.Errorf("len(newSecret()) = %d, want 48 (change bench.secretLen with it)", len(s))
	}
}
