package sdk

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeBerth is a stand-in for the backend API: unit tests of the SDK's
// retry and save logic; the real API is exercised end to end in e2e.
type fakeBerth struct {
	mu     sync.Mutex
	data   []byte
	fail   atomic.Int32 // fail this many requests with 503
	fenced atomic.Bool
	puts   atomic.Int32
	secret string
}

func (f *fakeBerth) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer "+f.secret {
		http.Error(w, "bad secret", http.StatusUnauthorized)
		return
	}
	if f.fail.Load() > 0 {
		f.fail.Add(-1)
		http.Error(w, "down", http.StatusServiceUnavailable)
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	switch r.Method {
	case http.MethodGet:
		if f.data == nil {
			http.Error(w, "none", http.StatusNotFound)
			return
		}
		w.Write(f.data)
	case http.MethodPut:
		if f.fenced.Load() {
			http.Error(w, "fenced", http.StatusConflict)
			return
		}
		f.puts.Add(1)
		f.data, _ = io.ReadAll(r.Body)
	}
}

func newClient(t *testing.T) (*Client, *fakeBerth) {
	f := &fakeBerth{secret: "s3cret"}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return &Client{URL: srv.URL + "/v1/backends/bk_1/state", Secret: "s3cret", HTTP: srv.Client()}, f
}

func TestClient_LoadSave(t *testing.T) {
	c, f := newClient(t)
	ctx := context.Background()
	if _, err := c.Load(ctx); !errors.Is(err, ErrNoState) {
		t.Fatalf("Load on empty: got %v, want ErrNoState", err)
	}
	f.fail.Store(2)
	if err := c.Save(ctx, []byte("v1")); err != nil {
		t.Fatalf("Save through two 503s: %v", err)
	}
	got, err := c.Load(ctx)
	if err != nil || string(got) != "v1" {
		t.Fatalf("Load = %q, %v; want v1", got, err)
	}
	f.fenced.Store(true)
	if err := c.Save(ctx, []byte("v2")); !errors.Is(err, ErrFenced) {
		t.Fatalf("Save when fenced: got %v, want ErrFenced", err)
	}
}

func TestSaver_FinalSaveOnCancel(t *testing.T) {
	c, f := newClient(t)
	var mu sync.Mutex
	doc := "a"
	s := &Saver{Client: c, Interval: time.Hour, Snapshot: func() []byte {
		mu.Lock()
		defer mu.Unlock()
		return []byte(doc)
	}}
	ctx, cancel := context.WithCancel(context.Background())
	go s.Run(ctx)
	mu.Lock()
	doc = "final text"
	mu.Unlock()
	s.Changed()
	cancel()
	if err := s.Wait(); err != nil {
		t.Fatal(err)
	}
	if got := string(f.data); got != "final text" {
		t.Errorf("saved %q, want the final text", got)
	}
}

func TestSaver_PeriodicOnlyWhenChanged(t *testing.T) {
	c, f := newClient(t)
	s := &Saver{Client: c, Interval: 10 * time.Millisecond, Snapshot: func() []byte { return []byte("x") }}
	ctx, cancel := context.WithCancel(context.Background())
	go s.Run(ctx)
	s.Changed()
	deadline := time.Now().Add(5 * time.Second)
	for f.puts.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	// Several more ticks with no change must not save again.
	time.Sleep(60 * time.Millisecond)
	cancel()
	s.Wait()
	if got := f.puts.Load(); got != 1 {
		t.Errorf("puts = %d, want exactly 1", got)
	}
}
