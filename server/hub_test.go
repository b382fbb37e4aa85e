package server

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
	"github.com/berthhq/berth/runtime/runtimetest"
	"github.com/berthhq/berth/store"
)

// Subscribers that ask for the same history between two signals share one
// read; a signal makes the next ask read again; a failed read is not
// shared with later callers; the caller that started a read can leave
// without failing the others.
func TestHub_SharesReadsBetweenSignals(t *testing.T) {
	h := newHub()
	var (
		loads   atomic.Int64
		mu      sync.Mutex
		history = []berth.Event{{Seq: 1, State: berth.StateScheduled}}
		release = make(chan struct{})
		failing atomic.Bool
	)
	load := func(after int64) func(context.Context) ([]berth.Event, error) {
		return func(ctx context.Context) ([]berth.Event, error) {
			loads.Add(1)
			<-release
			if failing.Load() {
				return nil, errors.New("store down")
			}
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			mu.Lock()
			defer mu.Unlock()
			var out []berth.Event
			for _, e := range history {
				if e.Seq > after {
					out = append(out, e)
				}
			}
			return out, nil
		}
	}
	const n = 50
	for range n {
		_, cancel := h.subscribe("bk_1")
		defer cancel()
	}
	ask := func(ctx context.Context, after int64) ([]berth.Event, error) {
		return h.events(ctx, "bk_1", after, load(after))
	}

	// n callers at once, the first of them leaving mid-read.
	leaderCtx, leave := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	got := make([][]berth.Event, n)
	errs := make([]error, n)
	wg.Add(1)
	go func() { defer wg.Done(); got[0], errs[0] = ask(leaderCtx, 0) }()
	for loads.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	for i := 1; i < n; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); got[i], errs[i] = ask(context.Background(), 0) }()
	}
	time.Sleep(20 * time.Millisecond) // let them all find the read in flight
	leave()
	close(release)
	wg.Wait()
	for i := range n {
		if errs[i] != nil || len(got[i]) != 1 || got[i][0].Seq != 1 {
			t.Fatalf("caller %d: %v, %v; want the scheduled event", i, got[i], errs[i])
		}
	}
	if l := loads.Load(); l != 1 {
		t.Errorf("%d store reads for %d callers between two signals, want 1", l, n)
	}
	if evs, _ := ask(context.Background(), 0); len(evs) != 1 || loads.Load() != 1 {
		t.Errorf("a later ask before any signal: %v after %d reads; want the shared read", evs, loads.Load())
	}

	// A change, then its signal: the next ask reads again and sees it.
	mu.Lock()
	history = append(history, berth.Event{Seq: 2, State: berth.StateStarting})
	mu.Unlock()
	h.publish("bk_1")
	if evs, err := ask(context.Background(), 1); err != nil || len(evs) != 1 || evs[0].Seq != 2 || loads.Load() != 2 {
		t.Errorf("after a signal: %v, %v after %d reads; want starting from a new read", evs, err, loads.Load())
	}

	// A failed read fails its callers, not the next one.
	h.publish("bk_1")
	failing.Store(true)
	if _, err := ask(context.Background(), 0); err == nil {
		t.Fatal("a failed read returned no error")
	}
	failing.Store(false)
	if evs, err := ask(context.Background(), 0); err != nil || len(evs) != 2 {
		t.Errorf("after a failed read: %v, %v; want the history read again", evs, err)
	}

	// Nobody subscribed: every ask reads.
	before := loads.Load()
	h.events(context.Background(), "bk_2", 0, load(0))
	h.events(context.Background(), "bk_2", 0, load(0))
	if l := loads.Load() - before; l != 2 {
		t.Errorf("%d reads for 2 asks about an unwatched backend, want 2", l)
	}
}

// BenchmarkEventFanOut: N subscribers follow one backend as the events
// endpoint does (subscribe, read the history, re-read after each signal);
// the backend is then stopped, and an op is the time until every subscriber
// has read terminated. The spawn before each op is not timed. asks/op is
// how often subscribers asked for history, reads/op how many store reads
// (of events) that took.
//
//	go test -run '^$' -bench EventFanOut -benchtime 20x ./server
func BenchmarkEventFanOut(b *testing.B) {
	bin := runtimetest.BuildTestBackend(b)
	for _, n := range []int{1, 100, 1000} {
		b.Run(fmt.Sprintf("subscribers=%d", n), func(b *testing.B) {
			var reads, loads atomic.Int64
			m := newProcessManager(b, func(st store.Store) store.Store { return countingStore{st, &loads} })
			follow := func(id string, subscribed *sync.WaitGroup, done *sync.WaitGroup) {
				defer done.Done()
				changed, cancel := m.Subscribe(id)
				defer cancel()
				subscribed.Done()
				var last int64
				for {
					reads.Add(1)
					evs, err := m.Events(context.Background(), id, last)
					if err != nil {
						b.Error(err)
						return
					}
					for _, e := range evs {
						last = e.Seq
						if e.State == berth.StateTerminated {
							return
						}
					}
					<-changed
				}
			}
			var asks, storeReads int64
			i := 0
			for b.Loop() {
				b.StopTimer()
				i++
				res, err := m.Connect(context.Background(), &api.ConnectRequest{
					Key: fmt.Sprintf("doc-%d", i), Wait: true, Spawn: &berth.SpawnConfig{Command: []string{bin}}})
				if err != nil {
					b.Fatal(err)
				}
				var subscribed, done sync.WaitGroup
				subscribed.Add(n)
				done.Add(n)
				for range n {
					go follow(res.BackendID, &subscribed, &done)
				}
				subscribed.Wait()
				time.Sleep(10 * time.Millisecond) // the first reads settle
				reads.Store(0)
				loads.Store(0)
				b.StartTimer()
				if err := m.Terminate(context.Background(), res.BackendID, true); err != nil {
					b.Fatal(err)
				}
				done.Wait()
				asks += reads.Load()
				storeReads += loads.Load()
			}
			b.ReportMetric(float64(asks)/float64(b.N), "asks/op")
			b.ReportMetric(float64(storeReads)/float64(b.N), "reads/op")
		})
	}
}

// countingStore counts the reads of events.
type countingStore struct {
	store.Store
	n *atomic.Int64
}

func (s countingStore) Events(ctx context.Context, id string, after int64) ([]berth.Event, error) {
	s.n.Add(1)
	return s.Store.Events(ctx, id, after)
}

// A read that panics still ends for those waiting on it, and is not
// shared afterwards.
func TestHub_PanickingReadIsNotShared(t *testing.T) {
	h := newHub()
	_, cancel := h.subscribe("bk_1")
	defer cancel()
	release := make(chan struct{})
	started := make(chan struct{})
	go func() {
		defer func() { recover() }()
		h.events(context.Background(), "bk_1", 0, func(context.Context) ([]berth.Event, error) {
			close(started)
			<-release
			panic("store driver bug")
		})
	}()
	<-started
	waited := make(chan error, 1)
	go func() {
		_, err := h.events(context.Background(), "bk_1", 0, func(context.Context) ([]berth.Event, error) {
			return nil, errors.New("a waiter must not load")
		})
		waited <- err
	}()
	time.Sleep(10 * time.Millisecond) // the waiter finds the read in flight
	close(release)
	select {
	case err := <-waited:
		if err == nil {
			t.Error("a waiter on a read that panicked got no error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a waiter on a read that panicked still waits")
	}
	evs, err := h.events(context.Background(), "bk_1", 0, func(context.Context) ([]berth.Event, error) {
		return []berth.Event{{Seq: 1}}, nil
	})
	if err != nil || len(evs) != 1 {
		t.Errorf("after a read that panicked: %v, %v; want a new read", evs, err)
	}
}

// A watcher hears of every backend: signals merge, the ids do not, and a
// cancelled watcher hears nothing more.
func TestHub_Watch(t *testing.T) {
	h := newHub()
	changed, take, cancel := h.watch()
	if got := take(); len(got) != 0 {
		t.Fatalf("take before any change: %v", got)
	}
	for _, id := range []string{"bk_a", "bk_b", "bk_a"} {
		h.publish(id)
	}
	select {
	case <-changed:
	default:
		t.Fatal("no signal after three changes")
	}
	select {
	case <-changed:
		t.Fatal("three changes left two signals; they should merge into one")
	default:
	}
	got := take()
	slices.Sort(got)
	if !slices.Equal(got, []string{"bk_a", "bk_b"}) {
		t.Errorf("take: %v, want [bk_a bk_b]", got)
	}
	if got := take(); len(got) != 0 {
		t.Errorf("a second take: %v, want nothing", got)
	}
	cancel()
	h.publish("bk_c")
	select {
	case <-changed:
		t.Error("a cancelled watcher got a signal")
	default:
	}
	if got := take(); len(got) != 0 {
		t.Errorf("a cancelled watcher took %v", got)
	}
}
