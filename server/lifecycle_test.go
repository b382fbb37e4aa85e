package server

import (
	"bytes"
	"context"
	"errors"
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

// A fresh start's readiness probe runs while the start and its handle are
// being recorded, but the route opens only once that record is made; when
// the record fails, the route never opens and the backend is stopped.
func TestManager_ProbeWhileStartIsRecorded(t *testing.T) {
	bin := runtimetest.BuildTestBackend(t)
	for _, fail := range []bool{false, true} {
		t.Run(map[bool]string{false: "recorded", true: "record fails"}[fail], func(t *testing.T) {
			gate := &startGate{entered: make(chan struct{}), release: make(chan struct{})}
			if fail {
				gate.err = errors.New("disk full")
			}
			m := newProcessManager(t, func(s store.Store) store.Store { gate.Store = s; return gate })
			answered := make(chan *instance, 1)
			testHookAnswered = func(inst *instance) { answered <- inst }
			t.Cleanup(func() { testHookAnswered = nil })

			res, err := m.Connect(t.Context(), &api.ConnectRequest{Key: "probe-early", Spawn: &berth.SpawnConfig{Command: []string{bin}}})
			if err != nil {
				t.Fatal(err)
			}
			<-gate.entered
			var inst *instance
			select {
			case inst = <-answered:
			case <-time.After(10 * time.Second):
				t.Fatal("the backend was not probed while its start was being recorded")
			}
			time.Sleep(20 * time.Millisecond) // room for a route opened too soon
			if _, ok := m.ResolveReady(res.BackendID); ok {
				t.Fatal("the route opened before the start was recorded")
			}
			select {
			case <-inst.answered:
				t.Fatal("the backend was marked answered before its start was recorded")
			default:
			}
			close(gate.release)

			if fail {
				// Until the backend is terminated (when its route is
				// closed for good), no route may open.
				for {
					if _, ok := m.ResolveReady(res.BackendID); ok {
						t.Fatal("the route opened for a start that was never recorded")
					}
					if inst.state() == berth.StateTerminated {
						break
					}
					time.Sleep(100 * time.Microsecond)
				}
				b := waitTerminated(t, m, res.BackendID)
				if b.Reason != berth.ReasonSpawnFailed {
					t.Errorf("reason %q, want %q", b.Reason, berth.ReasonSpawnFailed)
				}
				return
			}
			select {
			case <-inst.answered:
			case <-time.After(10 * time.Second):
				t.Fatal("the route did not open once the start was recorded")
			}
			if r, ok := m.ResolveReady(res.BackendID); !ok || r.Addr == "" {
				t.Errorf("after the record: route %+v, %v; want the backend's address", r, ok)
			}
		})
	}
}

// startGate holds the record of a backend's start (starting with its
// handle) until release is closed, then makes it, or fails with err.
type startGate struct {
	store.Store
	entered, release chan struct{}
	err              error
}

func (s *startGate) Transition(ctx context.Context, id string, t store.Transition) (*berth.Backend, error) {
	if t.To == berth.StateStarting && t.Handle != nil {
		close(s.entered)
		<-s.release
		if s.err != nil {
			return nil, s.err
		}
	}
	return s.Store.Transition(ctx, id, t)
}
