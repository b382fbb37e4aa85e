package server

import (
	"bytes"
	"context"
	"errors"
	"io"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/logs"
	"github.com/berthhq/berth/runtime"
	"github.com/berthhq/berth/store/sqlite"
	"github.com/berthhq/berth/token"
)

// listedRuntime is a runtime whose instances exist only as listed handles:
// what a Berth killed during a start left behind. Stop blocks on release
// and fails while failStops is positive.
type listedRuntime struct {
	release chan struct{}

	mu        sync.Mutex
	listed    []*runtime.Handle
	stopped   []string
	failStops int
}

var (
	_ runtime.Runtime = (*listedRuntime)(nil)
	_ runtime.Lister  = (*listedRuntime)(nil)
)

func (r *listedRuntime) Name() string { return "process" }
func (r *listedRuntime) Caps() runtime.Caps {
	c, _ := runtime.Known("process")
	return c
}
func (r *listedRuntime) Start(context.Context, runtime.Spec) (*runtime.Handle, error) {
	return nil, errors.New("listedRuntime: no starts")
}
func (r *listedRuntime) Wait(ctx context.Context, h *runtime.Handle) (runtime.Exit, error) {
	<-ctx.Done()
	return runtime.Exit{}, ctx.Err()
}
func (r *listedRuntime) Recover(context.Context, *runtime.Handle, io.Writer) error {
	return runtime.ErrGone
}
func (r *listedRuntime) Cleanup(context.Context, *runtime.Handle) error { return nil }
func (r *listedRuntime) List(context.Context) ([]*runtime.Handle, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.listed, nil
}
func (r *listedRuntime) Stop(ctx context.Context, h *runtime.Handle, _ string, _ time.Duration) error {
	select {
	case <-r.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failStops > 0 {
		r.failStops--
		return errors.New("engine busy")
	}
	r.stopped = append(r.stopped, h.BackendID)
	return nil
}

func (r *listedRuntime) wasStopped(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.stopped {
		if s == id {
			return true
		}
	}
	return false
}

// A record left scheduled, without a handle, by a Berth killed during the
// start, while the runtime runs an instance for it: Reconcile stops that
// instance (retrying a failed stop) before the record says lost, and the
// key stays held until then.
func TestManager_ReconcileStopsUnrecordedStart(t *testing.T) {
	ctx := context.Background()
	st, err := sqlite.Open(filepath.Join(t.TempDir(), "berth.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	b := &berth.Backend{ID: "bk_unrecorded", Key: "doc", State: berth.StateScheduled, Runtime: "process",
		Spawn: berth.SpawnConfig{Command: []string{"x"}}, Secret: "s", CreatedAt: time.Now().UTC()}
	if _, _, err := st.CreateBackend(ctx, b); err != nil {
		t.Fatal(err)
	}
	rt := &listedRuntime{release: make(chan struct{}), failStops: 1,
		listed: []*runtime.Handle{{BackendID: b.ID, Runtime: "process", State: []byte(`{}`)}}}
	signer, _ := token.NewSigner(bytes.Repeat([]byte("k"), token.MinKeyLen))
	m, err := New(Config{Store: st, Runtimes: map[string]runtime.Runtime{"process": rt}, Logs: logs.New(logs.Config{}), Signer: signer})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		m.Shutdown(sctx)
	})
	reconciled := make(chan error, 1)
	go func() { reconciled <- m.Reconcile(ctx) }()
	t.Cleanup(func() { <-reconciled })
	defer close(rt.release)

	// The instance is not stopped yet: the record must not be terminated
	// and the key must still be held.
	var got *berth.Backend
	for range 20 {
		if got, err = st.Backend(ctx, b.ID); err != nil {
			t.Fatal(err)
		}
		if got.State == berth.StateTerminated {
			t.Fatalf("record terminated (%s: %s) before its instance was stopped", got.Reason, lastMessage(t, m, b.ID))
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case err := <-reconciled:
		if err != nil {
			t.Fatal(err)
		}
		reconciled <- nil
	case <-time.After(5 * time.Second):
		t.Fatal("Reconcile waits for the stop of a lost backend's instance; Berth would not come up while a runtime is slow")
	}
	if !m.KeyLive("doc") {
		t.Error("key free before the instance of its holder was stopped")
	}
	if _, err := st.KeyHolder(ctx, "doc"); err != nil {
		t.Errorf("store: key holder: %v, want the unrecorded backend until it is stopped", err)
	}

	rt.release <- struct{}{} // the first stop fails; the retry succeeds
	rt.release <- struct{}{}
	got = waitTerminated(t, m, b.ID)
	if !rt.wasStopped(b.ID) {
		t.Error("record terminated but the instance was never stopped")
	}
	if got.Reason != berth.ReasonLost {
		t.Errorf("reason %q, want lost", got.Reason)
	}
}

func lastMessage(t *testing.T, m *Manager, id string) string {
	t.Helper()
	es, err := m.Events(context.Background(), id, 0)
	if err != nil || len(es) == 0 {
		return ""
	}
	return es[len(es)-1].Message
}

// lateRuntime is a listedRuntime whose starts can finish after Berth died
// (runtime.LateStarter), as a Docker Engine's can: its first List (the one
// Reconcile makes) shows nothing, its second fails, and later ones show
// the instance that appeared meanwhile.
type lateRuntime struct {
	*listedRuntime
	lists atomic.Int64
}

func (*lateRuntime) StartSettle() time.Duration { return 50 * time.Millisecond }

func (r *lateRuntime) List(ctx context.Context) ([]*runtime.Handle, error) {
	switch r.lists.Add(1) {
	case 1:
		return nil, nil
	case 2:
		return nil, errors.New("engine overloaded")
	}
	return r.listedRuntime.List(ctx)
}

// A start Berth did not live to record, whose instance the runtime lists
// only after Reconcile listed (an engine finishing a create late), and
// whose first listing after the settle fails: the record says lost only
// once a listing succeeded and the instance it found is stopped.
func TestManager_ReconcileStopsLateInstance(t *testing.T) {
	ctx := context.Background()
	st, err := sqlite.Open(filepath.Join(t.TempDir(), "berth.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	b := &berth.Backend{ID: "bk_late", Key: "doc", State: berth.StateScheduled, Runtime: "process",
		Spawn: berth.SpawnConfig{Command: []string{"x"}}, Secret: "s", CreatedAt: time.Now().UTC()}
	if _, _, err := st.CreateBackend(ctx, b); err != nil {
		t.Fatal(err)
	}
	rt := &lateRuntime{listedRuntime: &listedRuntime{release: make(chan struct{}),
		listed: []*runtime.Handle{{BackendID: b.ID, Runtime: "process", State: []byte(`{}`)}}}}
	close(rt.release)
	signer, _ := token.NewSigner(bytes.Repeat([]byte("k"), token.MinKeyLen))
	m, err := New(Config{Store: st, Runtimes: map[string]runtime.Runtime{"process": rt}, Logs: logs.New(logs.Config{}), Signer: signer})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		m.Shutdown(sctx)
	})
	if err := m.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	got := waitTerminated(t, m, b.ID)
	if !rt.wasStopped(b.ID) {
		t.Error("record terminated, but the instance that appeared after Reconcile was never stopped")
	}
	if n := rt.lists.Load(); n < 3 {
		t.Errorf("record terminated after %d listings; want the failed one retried", n)
	}
	if got.Reason != berth.ReasonLost {
		t.Errorf("reason %q, want lost", got.Reason)
	}
}
