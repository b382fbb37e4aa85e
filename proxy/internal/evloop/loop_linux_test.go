//go:build linux

package evloop

import (
	"bufio"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berthhq/berth/proxy/internal/h1"
)

func testConfig(h Handler) Config {
	return Config{
		Handler:            h,
		Log:                slog.New(slog.DiscardHandler),
		IdleTimeout:        time.Minute,
		SweepTick:          50 * time.Millisecond,
		ClientReadSize:     8 << 10,
		BackendReadSize:    16 << 10,
		MaxIdlePerBackend:  8,
		BackendIdleTimeout: time.Minute,
		WatchAfter:         10 * time.Millisecond,
	}
}

// testHandler serves requests by their target: /fwd/<addr>/... is
// forwarded to addr, /wait/ is handed off to wait, /answer/ is answered by
// the exchange; anything it does not parse is refused.
type testHandler struct {
	mu       sync.Mutex
	handed   []handed
	handedCh chan handed
	ended    int
}

type handed struct {
	prefix string
	parsed bool
	c      net.Conn
}

func (h *testHandler) NewExchange(string) Exchange { return &testExchange{h: h} }

func (h *testHandler) HandOff(c net.Conn, prefix []byte, parsed bool) {
	h.handedCh <- handed{string(prefix), parsed, c}
}

type testExchange struct {
	h      *testHandler
	req    h1.Request
	begun  bool
	aborts []error
}

func (x *testExchange) Begin(head []byte, out *h1.OutBuf) Next {
	if !x.req.Parse(head) {
		return Next{Action: Refuse}
	}
	x.begun = true
	next := Next{Head: x.req.Head, Close: x.req.Close}
	target := string(x.req.Target)
	switch {
	case strings.HasPrefix(target, "/fwd/"):
		next.Action, next.Addr = Forward, strings.SplitN(target, "/", 4)[2]
	case strings.HasPrefix(target, "/wait/"):
		next.Action = Wait
	default:
		out.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nanswered")
	}
	return next
}

func (x *testExchange) WriteRequest(out *h1.OutBuf) {
	out.Write(x.req.Method)
	out.WriteString(" /from-loop HTTP/1.1\r\nHost: backend\r\n\r\n")
}

func (x *testExchange) BadGateway(out *h1.OutBuf, err error) {
	out.WriteString("HTTP/1.1 502 Bad Gateway\r\nContent-Length: 3\r\n\r\nbad")
}

func (x *testExchange) Aborted(err error) { x.aborts = append(x.aborts, err) }

func (x *testExchange) End() {
	if x.begun && x.h != nil {
		x.h.mu.Lock()
		x.h.ended++
		x.h.mu.Unlock()
	}
	x.begun = false
}

// serveLoops starts a Group and a listener whose connections it adopts.
func serveLoops(t *testing.T, h *testHandler) (*Group, string) {
	t.Helper()
	h.handedCh = make(chan handed, 4)
	g, err := Start(testConfig(h))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if !g.Adopt(c) {
				c.Close()
			}
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		g.Shutdown()
		done := make(chan struct{})
		go func() { g.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			g.Abort()
			t.Error("the loops did not stop after Shutdown")
		}
	})
	return g, ln.Addr().String()
}

// The loop forwards what the Exchange says to forward, relays the response
// through h1, keeps the backend connection for the next request, answers
// what the Exchange answers itself, and ends every request.
func TestGroup_ForwardsAndAnswers(t *testing.T) {
	backend := httpBackend(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Method+" "+r.URL.Path)
	})
	h := &testHandler{}
	_, addr := serveLoops(t, h)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	for i, tt := range []struct{ method, target, want string }{
		{"GET", "/fwd/" + backend + "/x", "GET /from-loop"},
		{"GET", "/fwd/" + backend + "/y", "GET /from-loop"},
		{"HEAD", "/fwd/" + backend + "/x", ""},
		{"GET", "/answer/", "answered"},
	} {
		io.WriteString(c, tt.method+" "+tt.target+" HTTP/1.1\r\nHost: x\r\n\r\n")
		res, err := http.ReadResponse(br, &http.Request{Method: tt.method})
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		body, _ := io.ReadAll(res.Body)
		if res.StatusCode != 200 || string(body) != tt.want {
			t.Fatalf("request %d: %d %q, want 200 %q", i, res.StatusCode, body, tt.want)
		}
	}
	// A request ends once its answer is written, which the client may
	// read first.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		h.mu.Lock()
		ended := h.ended
		h.mu.Unlock()
		if ended == 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d requests ended, want 4", ended)
		}
	}

	// A backend that cannot be reached: the Exchange's 502.
	io.WriteString(c, "GET /fwd/127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\n\r\n")
	res, err := http.ReadResponse(br, nil)
	if err != nil || res.StatusCode != 502 {
		t.Fatalf("unreachable backend: %v %v, want the Exchange's 502", res, err)
	}
	res.Body.Close()
}

// A request that must wait, and a head the loop does not serve, go to the
// Handler with every byte the loop read and did not consume.
func TestGroup_HandsOff(t *testing.T) {
	h := &testHandler{}
	_, addr := serveLoops(t, h)
	for _, tt := range []struct {
		send   string
		parsed bool
	}{
		{"GET /wait/ HTTP/1.1\r\nHost: x\r\n\r\nGET /next", true},
		{"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi", false},
	} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, tt.send)
		select {
		case got := <-h.handedCh:
			defer got.c.Close()
			if got.parsed != tt.parsed || !strings.HasPrefix(tt.send, got.prefix) || got.prefix == "" {
				t.Errorf("%.20q: handed off with %q, parsed %v; want a prefix of what was sent, parsed %v", tt.send, got.prefix, got.parsed, tt.parsed)
			}
			// The rest of what the client sends reaches the new owner.
			io.WriteString(c, "!")
			rest := make([]byte, len(tt.send)-len(got.prefix)+1)
			got.c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(got.c, rest); err != nil || got.prefix+string(rest) != tt.send+"!" {
				t.Errorf("%.20q: the new owner read %q after the prefix %q (%v)", tt.send, rest, got.prefix, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%.20q: not handed off", tt.send)
		}
	}
}

func httpBackend(t *testing.T, f http.HandlerFunc) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: f}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}
