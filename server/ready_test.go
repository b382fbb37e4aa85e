package server

import (
	"bufio"
	"context"
	"errors"
	"io"
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
			if got := newProbe(tt.addr, nil).answersHTTP(ctx); got != tt.want {
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
	if err := pollReady(t.Context(), addr, interval, nil); err != nil {
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
	if err := pollReady(ctx, l.Addr().String(), interval, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("pollReady of nothing: %v, want DeadlineExceeded", err)
	}
}

func TestProbe_KeepsAnsweredConnection(t *testing.T) {
	var (
		mu     sync.Mutex
		conns  = map[string]int{} // requests per client address
		closes []string           // Connection headers seen
	)
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		conns[r.RemoteAddr]++
		closes = append(closes, r.Header.Get("Connection"))
		mu.Unlock()
		w.Write([]byte("ok"))
	}))
	defer s.Close()
	addr := s.Listener.Addr().String()

	// Without a keeper the probe asks the backend to close.
	if !newProbe(addr, nil).answersHTTP(t.Context()) {
		t.Fatal("the probe got no answer")
	}
	// With one, the keeper gets the answered connection, still open, with
	// the answer in its reader, and can send the next request on it.
	type kept struct {
		addr string
		c    net.Conn
		br   *bufio.Reader
	}
	keptC := make(chan kept, 1)
	keep := func(a string, c net.Conn, br *bufio.Reader) { keptC <- kept{a, c, br} }
	if !newProbe(addr, keep).answersHTTP(t.Context()) {
		t.Fatal("the probe got no answer")
	}
	var k kept
	select {
	case k = <-keptC:
	default:
		t.Fatal("the answered connection was not handed over")
	}
	defer k.c.Close()
	if k.addr != addr {
		t.Errorf("handed over for %q, want %q", k.addr, addr)
	}
	res, err := http.ReadResponse(k.br, nil)
	if err != nil {
		t.Fatalf("the probe's answer: %v", err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if _, err := k.c.Write([]byte("GET /next HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	if res, err = http.ReadResponse(k.br, nil); err != nil {
		t.Fatalf("a second request on the kept connection: %v", err)
	}
	res.Body.Close()

	mu.Lock()
	defer mu.Unlock()
	if len(conns) != 2 || len(closes) != 3 || closes[0] != "close" || closes[1] != "" {
		t.Errorf("the backend saw %d connections (requests per connection %v) and Connection headers %q; want 2 connections, close on the first probe only", len(conns), conns, closes)
	}

	// A keeper is not called for a probe that got no answer.
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed.Close()
	if newProbe(closed.Addr().String(), keep).answersHTTP(t.Context()) {
		t.Error("a refused probe counted as an answer")
	}
	select {
	case <-keptC:
		t.Error("a refused probe handed over a connection")
	default:
	}
}

// The proxy gets a probe's connection only while a request waits for the
// backend; otherwise the connection is closed.
func TestManager_KeepFor(t *testing.T) {
	var kept []net.Conn
	m := &Manager{cfg: Config{ReuseProbeConn: func(_ string, c net.Conn, _ *bufio.Reader) { kept = append(kept, c) }}}
	inst := &instance{}
	for _, waiting := range []int64{0, 1} {
		inst.waiting.Store(waiting)
		here, there := net.Pipe()
		m.probeConnReuser(t.Context(), inst, closedGate)("127.0.0.1:1", here, bufio.NewReader(here))
		there.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		_, err := there.Read(make([]byte, 1))
		closed := errors.Is(err, io.EOF)
		if closed != (waiting == 0) || len(kept) != int(waiting) {
			t.Errorf("with %d waiting: closed %v (%v), kept %d; want closed only with none waiting", waiting, closed, err, len(kept))
		}
		here.Close()
	}
	if (&Manager{}).probeConnReuser(t.Context(), inst, closedGate) != nil {
		t.Error("without Config.ReuseProbeConn the probe got a keeper")
	}

	// A probe that answered while the start was being recorded hands its
	// connection over only once the record is made, and never when it is
	// cancelled first (the record failed).
	kept = nil
	inst.waiting.Store(1)
	recorded := make(chan struct{})
	here, there := net.Pipe()
	handed := make(chan struct{})
	go func() {
		m.probeConnReuser(t.Context(), inst, recorded)("127.0.0.1:1", here, bufio.NewReader(here))
		close(handed)
	}()
	select {
	case <-handed:
		t.Fatal("the connection was handed over before the start was recorded")
	case <-time.After(20 * time.Millisecond):
	}
	close(recorded)
	<-handed
	if len(kept) != 1 {
		t.Errorf("after the record: kept %d connections, want 1", len(kept))
	}
	here.Close()
	there.Close()

	kept = nil
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	here, there = net.Pipe()
	m.probeConnReuser(ctx, inst, make(chan struct{}))("127.0.0.1:1", here, bufio.NewReader(here))
	there.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := there.Read(make([]byte, 1)); !errors.Is(err, io.EOF) || len(kept) != 0 {
		t.Errorf("cancelled before the record: read %v, kept %d; want the connection closed, none kept", err, len(kept))
	}
}
