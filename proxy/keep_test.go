package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// A readiness probe's answered connection, handed to Keep, carries the
// first request to a starting backend when the answer is whole and the
// connection reusable, and is closed otherwise.
func TestProxy_Keep(t *testing.T) {
	for _, tt := range []struct {
		name, answer string
		kept         bool
	}{
		{"length", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", true},
		{"no body", "HTTP/1.1 204 No Content\r\n\r\n", true},
		{"any status", "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n", true},
		{"close", "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", false},
		{"HTTP/1.0", "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", false},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", true},
		{"chunked, trailers", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-T: 1\r\n\r\n", true},
		{"chunks not all read", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n", false},
		{"more after the chunks", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nHTTP", false},
		{"chunked, close", "HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", false},
		{"no body, but bytes", "HTTP/1.1 304 Not Modified\r\n\r\nxx", false},
		{"until close", "HTTP/1.1 200 OK\r\n\r\nok", false},
		{"body not all read", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok", false},
		{"head not all read", "HTTP/1.1 200 OK\r\nContent-Len", false},
		{"more than one answer", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n", false},
		{"interim", "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			be := newKeepBackend(t, tt.answer)
			f := newFixture(t, http.NotFoundHandler())
			f.resolver.mu.Lock()
			f.resolver.routes["bk_k"] = Route{BackendID: "bk_k", Addr: be.addr}
			f.resolver.mu.Unlock()
			started := f.starting("bk_k")

			type reply struct {
				status int
				body   string
			}
			replied := make(chan reply, 1)
			go func() {
				res, err := http.Get(f.server.URL + "/" + f.token("bk_k") + "/first")
				if err != nil {
					t.Error(err)
					replied <- reply{}
					return
				}
				b, _ := io.ReadAll(res.Body)
				res.Body.Close()
				replied <- reply{res.StatusCode, string(b)}
			}()
			waitFor(t, "the request to wait for the start", func() bool { return f.resolver.calls.Load() > 0 })

			// The probe: one GET, and the answer read as far as it came.
			c, err := net.Dial("tcp", be.addr)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: "+be.addr+"\r\nUser-Agent: berth-readiness\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(c)
			if _, err := br.Peek(len(tt.answer)); err != nil {
				t.Fatal(err)
			}
			f.proxy.Keep(be.addr, c, br)
			close(started)

			r := <-replied
			if r.status != http.StatusOK || r.body != "/first" {
				t.Fatalf("the first request got %d %q, want 200 /first", r.status, r.body)
			}
			probeConn := be.conn(0)
			if tt.kept {
				if got := probeConn.requests(); !equal(got, []string{"/", "/first"}) {
					t.Errorf("the probe's connection carried %q, want the probe and the first request", got)
				}
				if n := be.conns(); n != 1 {
					t.Errorf("the backend accepted %d connections, want 1", n)
				}
				return
			}
			select {
			case <-probeConn.closed:
			case <-time.After(5 * time.Second):
				t.Fatal("the probe's connection was neither kept nor closed")
			}
			if got := probeConn.requests(); !equal(got, []string{"/"}) {
				t.Errorf("the probe's connection carried %q, want the probe only", got)
			}
		})
	}
}

// keepBackend answers a probe (GET /) with a fixed answer and any other
// request with its path, and records what each connection saw.
type keepBackend struct {
	addr string
	mu   sync.Mutex
	cs   []*keptConn
}

type keptConn struct {
	mu     sync.Mutex
	paths  []string
	closed chan struct{} // the peer closed it
}

func (k *keptConn) requests() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]string(nil), k.paths...)
}

func newKeepBackend(t *testing.T, first string) *keepBackend {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	be := &keepBackend{addr: ln.Addr().String()}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			kc := &keptConn{closed: make(chan struct{})}
			be.mu.Lock()
			be.cs = append(be.cs, kc)
			be.mu.Unlock()
			go func() {
				defer c.Close()
				defer close(kc.closed)
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					kc.mu.Lock()
					kc.paths = append(kc.paths, req.URL.Path)
					kc.mu.Unlock()
					answer := first
					if req.URL.Path != "/" {
						answer = fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(req.URL.Path), req.URL.Path)
					}
					if _, err := io.WriteString(c, answer); err != nil || strings.Contains(answer, "Connection: close") {
						return
					}
				}
			}()
		}
	}()
	return be
}

func (be *keepBackend) conns() int {
	be.mu.Lock()
	defer be.mu.Unlock()
	return len(be.cs)
}

func (be *keepBackend) conn(i int) *keptConn {
	be.mu.Lock()
	defer be.mu.Unlock()
	return be.cs[i]
}

// A request waiting for a starting backend tells the resolver whether a
// kept connection could carry it: plain GETs and HEADs can; a request
// with a body or an upgrade cannot.
func TestProxy_PooledHint(t *testing.T) {
	f := newFixture(t, http.HandlerFunc(wsEcho))
	started := f.starting("bk_1")
	go func() {
		waitFor(t, "three waiting requests", func() bool { return f.resolver.calls.Load() >= 3 })
		close(started)
	}()
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); f.get(t, "/"+f.token("bk_1")+"/a", nil) }()
	go func() { defer wg.Done(); f.do(t, http.MethodPost, "/"+f.token("bk_1")+"/b", nil, "body") }()
	go func() { defer wg.Done(); f.dialWS(t).CloseNow() }()
	wg.Wait()

	f.resolver.mu.Lock()
	defer f.resolver.mu.Unlock()
	pooled := 0
	for _, p := range f.resolver.pooled {
		if p {
			pooled++
		}
	}
	if len(f.resolver.pooled) != 3 || pooled != 1 {
		t.Errorf("Pooled per waiting request: %v; want one true (the GET) of three", f.resolver.pooled)
	}
}

// A connection handed to KeepIdle (a pooled backend's claim, answered)
// carries the next request to its backend, on the event loops and on the
// goroutine path alike: the backend accepts no second connection.
func TestServer_KeepIdle(t *testing.T) {
	for _, noLoops := range []bool{false, true} {
		t.Run(fmt.Sprintf("NoEventLoop=%v", noLoops), func(t *testing.T) {
			be := newKeepBackend(t, "HTTP/1.1 204 No Content\r\n\r\n")
			f := newFixture(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.URL.Path) }))
			f.resolver.mu.Lock()
			f.resolver.routes["bk_k"] = Route{BackendID: "bk_k", Addr: be.addr}
			f.resolver.mu.Unlock()
			srv, addr, _ := f.ownServer(t, ServerConfig{NoEventLoop: noLoops})
			defer srv.Shutdown(t.Context())
			// One request first: the loops start with the first Serve.
			get := func(path string) string {
				c, br := dialRaw(t, addr)
				defer c.Close()
				io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n")
				res, body := readResponse(t, br, "GET")
				if res.StatusCode != http.StatusOK {
					t.Fatalf("GET %s: %d %q", path, res.StatusCode, body)
				}
				return body
			}
			get("/" + f.token("bk_1") + "/warm")

			// The claim: one request on a connection of its own, its
			// answer read whole.
			c, err := net.Dial("tcp", be.addr)
			if err != nil {
				t.Fatal(err)
			}
			io.WriteString(c, "GET / HTTP/1.1\r\nHost: "+be.addr+"\r\n\r\n")
			res, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil || res.StatusCode != http.StatusNoContent {
				t.Fatalf("claim: %v, %v", res, err)
			}
			srv.KeepIdle(be.addr, c)

			if body := get("/" + f.token("bk_k") + "/first"); body != "/first" {
				t.Fatalf("the first request got %q, want /first", body)
			}
			if n := be.conns(); n != 1 {
				t.Errorf("the backend accepted %d connections, want 1", n)
			}
			if got := be.conn(0).requests(); !equal(got, []string{"/", "/first"}) {
				t.Errorf("the kept connection carried %q, want the claim and the first request", got)
			}
		})
	}
}
