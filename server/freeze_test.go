package server

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
	"github.com/berthhq/berth/runtime"
	"github.com/berthhq/berth/runtime/runtimetest"
	"github.com/prometheus/client_golang/prometheus"
)

// noFreezer hides a runtime's Freezer methods: a runtime that cannot freeze.
type noFreezer struct{ runtime.Runtime }

func TestManager_FreezeRefusedByRuntimeThatCannot(t *testing.T) {
	m := newProcessManager(t, nil)
	m.cfg.Runtimes["process"] = noFreezer{m.cfg.Runtimes["process"]}
	_, err := m.Connect(t.Context(), &api.ConnectRequest{Key: "k", Spawn: &berth.SpawnConfig{
		Command: []string{"/bin/true"}, IdleAction: berth.IdleFreeze}})
	var fe *berth.FieldError
	if !errors.As(err, &fe) || fe.Field != "spawn.idle_action" {
		t.Fatalf("connect asking a runtime that cannot freeze to freeze: %v, want a FieldError on spawn.idle_action", err)
	}
	if !strings.Contains(fe.Message, "cannot freeze") {
		t.Errorf("message %q does not say why", fe.Message)
	}
}

// frozenBackend spawns a testbackend that freezes after a second idle,
// and returns its instance once it is frozen.
func frozenBackend(t *testing.T, m *Manager, key string) *instance {
	t.Helper()
	return frozenBackendWith(t, m, key, 0)
}

// frozenBackendWith is frozenBackend with a lifetime.
func frozenBackendWith(t *testing.T, m *Manager, key string, lifetime int) *instance {
	t.Helper()
	bin := runtimetest.BuildTestBackend(t)
	res, err := m.Connect(t.Context(), &api.ConnectRequest{Key: key, Wait: true, Spawn: &berth.SpawnConfig{
		Command: []string{bin}, MaxIdleSeconds: ptr(1), IdleAction: berth.IdleFreeze, GraceSeconds: ptr(2),
		LifetimeSeconds: lifetime}})
	if err != nil {
		t.Fatal(err)
	}
	m.mu.Lock()
	inst := m.live[res.BackendID]
	m.mu.Unlock()
	deadline := time.Now().Add(15 * time.Second)
	for inst.snapshot().FrozenAt == nil {
		if time.Now().After(deadline) {
			t.Fatalf("backend %s not frozen after 15s", inst.id)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return inst
}

func ptr[T any](v T) *T { return &v }

// The proxy's fast path does not route to a frozen backend; Resolve thaws
// it before it answers.
func TestManager_ResolveThaws(t *testing.T) {
	m := newProcessManager(t, nil)
	inst := frozenBackend(t, m, "resolve")
	if _, ok := m.ResolveReady(inst.id); ok {
		t.Fatal("ResolveReady routed to a frozen backend")
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m.Collector())
	if got := gauge(t, reg, "berth_backends_frozen"); got != 1 {
		t.Errorf("berth_backends_frozen = %v, want 1", got)
	}
	r, err := m.Resolve(t.Context(), inst.id)
	if err != nil {
		t.Fatalf("Resolve of a frozen backend: %v", err)
	}
	r.Activity.Begin() // as the proxy does; while active it cannot freeze again
	defer r.Activity.End()
	if inst.fz.frozen.Load() || inst.snapshot().FrozenAt != nil {
		t.Fatal("Resolve returned before the backend thawed")
	}
	get(t, r.Addr)
	if _, ok := m.ResolveReady(inst.id); !ok {
		t.Error("ResolveReady does not route to the thawed backend")
	}
}

// A request that got its route just before the freeze reports its
// activity (Begin) after it: Begin asks for the thaw, and the request is
// answered.
func TestManager_BeginAfterFreezeThaws(t *testing.T) {
	m := newProcessManager(t, nil)
	inst := frozenBackend(t, m, "late")
	r, ok := inst.route() // what ResolveReady gave before the freeze
	if !ok {
		t.Fatal("no route")
	}
	r.Activity.Begin()
	get(t, r.Addr) // would hang on a backend left frozen
	r.Activity.End()
	// The backend answers as soon as it runs, which may be a moment
	// before its lifecycle has cleared the mark.
	deadline := time.Now().Add(5 * time.Second)
	for inst.snapshot().FrozenAt != nil {
		if time.Now().After(deadline) {
			t.Fatal("the backend a request began on is still marked frozen after 5s")
		}
		time.Sleep(time.Millisecond)
	}
}

func get(t *testing.T, addr string) {
	t.Helper()
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + addr + "/count")
	if err != nil {
		t.Fatalf("GET the thawed backend: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}

// gauge gathers reg and returns the value of the named gauge.
func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.Metric) == 1 {
			return mf.Metric[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// Whatever ends a frozen backend thaws it first, so its stop signal is
// handled: a terminate, hard or not, and its lifetime.
func TestManager_StopsFrozen(t *testing.T) {
	for _, tc := range []struct {
		name string
		stop func(m *Manager, inst *instance)
		want berth.Reason
	}{
		{"terminate", func(m *Manager, inst *instance) { m.Terminate(t.Context(), inst.id, false) }, berth.ReasonRequested},
		{"hard terminate", func(m *Manager, inst *instance) { m.Terminate(t.Context(), inst.id, true) }, berth.ReasonRequested},
		{"lifetime", func(*Manager, *instance) {}, berth.ReasonLifetime},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newProcessManager(t, nil)
			lifetime := 0
			if tc.want == berth.ReasonLifetime {
				lifetime = 3
			}
			inst := frozenBackendWith(t, m, "stop", lifetime)
			tc.stop(m, inst)
			b := waitTerminated(t, m, inst.id)
			if b.Reason != tc.want || b.FrozenAt != nil {
				t.Errorf("terminated %s (frozen_at %v), want %s and not frozen", b.Reason, b.FrozenAt, tc.want)
			}
			if tc.name != "hard terminate" && (b.ExitCode == nil || *b.ExitCode != 0) {
				t.Errorf("exit code %v, want 0: the backend did not handle its stop signal (was it thawed?)", b.ExitCode)
			}
		})
	}
}

// The proxy's fast path pays one atomic load for freezing and allocates
// nothing: ResolveReady, Begin and End of a ready backend of a freezing
// spawn.
func TestManager_ResolveReadyAllocatesNothing(t *testing.T) {
	m := newProcessManager(t, nil)
	bin := runtimetest.BuildTestBackend(t)
	res, err := m.Connect(t.Context(), &api.ConnectRequest{Key: "alloc", Wait: true, Spawn: &berth.SpawnConfig{
		Command: []string{bin}, MaxIdleSeconds: ptr(3600), IdleAction: berth.IdleFreeze}})
	if err != nil {
		t.Fatal(err)
	}
	id := res.BackendID
	if _, ok := m.ResolveReady(id); !ok {
		t.Fatal("ResolveReady does not route to the ready backend")
	}
	allocs := testing.AllocsPerRun(1000, func() {
		r, _ := m.ResolveReady(id)
		r.Activity.Begin()
		r.Activity.End()
	})
	if allocs != 0 {
		t.Errorf("ResolveReady + Begin + End allocate %v times per request, want 0", allocs)
	}
}
