package server

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestProbe_AnswersHTTP(t *testing.T) {
	serve := func(h http.HandlerFunc) string {
		s := httptest.NewServer(h)
		t.Cleanup(s.Close)
		return s.Listener.Addr().String()
	}
	// Accepts connections and closes them without a word.
	mute, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mute.Close() })
	go func() {
		for {
			c, err := mute.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	// Listens, never accepts: nothing is ever answered.
	deaf, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deaf.Close() })
	// Nothing listens here.
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := closed.Addr().String()
	closed.Close()

	var (
		mu               sync.Mutex
		gotPath, gotHost string
	)
	ok := serve(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		gotPath, gotHost = r.URL.Path, r.Host
		mu.Unlock()
	})
	for _, tt := range []struct {
		name, addr string
		want       bool
	}{
		{"200", ok, true},
		{"by name", "localhost:" + ok[strings.LastIndexByte(ok, ':')+1:], true},
		{"any status counts", serve(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) }), true},
		{"refused", refused, false},
		{"closed without an answer", mute.Addr().String(), false},
		{"never answers", deaf.Addr().String(), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
			defer cancel()
			if got := newProbe(tt.addr).answersHTTP(ctx); got != tt.want {
				t.Errorf("answersHTTP = %v, want %v", got, tt.want)
			}
		})
	}
	mu.Lock()
	defer mu.Unlock()
	if gotPath != "/" || !strings.HasSuffix(gotHost, ok[strings.LastIndexByte(ok, ':'):]) {
		t.Errorf("the backend saw GET %s with Host %q; want / and the address polled", gotPath, gotHost)
	}
}

func TestPollReady(t *testing.T) {
	// A backend that comes up after a few refused attempts is found.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	attempts := 0
	up := make(chan struct{})
	interval := func() time.Duration {
		if attempts++; attempts == 3 {
			s := httptest.NewUnstartedServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
			var err error
			if s.Listener, err = net.Listen("tcp", addr); err != nil {
				t.Error(err) // the port was taken meanwhile
			} else {
				s.Start()
				t.Cleanup(s.Close)
			}
			close(up)
		}
		return time.Microsecond
	}
	if err := pollReady(t.Context(), addr, interval); err != nil {
		t.Fatalf("pollReady: %v", err)
	}
	select {
	case <-up:
	default:
		t.Error("pollReady returned before the backend was up")
	}

	// One that never comes up ends with the context.
	if l, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	l.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	if err := pollReady(ctx, l.Addr().String(), interval); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("pollReady of nothing: %v, want DeadlineExceeded", err)
	}
}
