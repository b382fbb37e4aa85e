package proxy

import (
	"github.com/berthhq/berth/proxy/internal/h1"

	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// rawConn opens a client connection to the fixture's proxy.
func (f *fixture) rawConn(t *testing.T) (net.Conn, *bufio.Reader) {
	t.Helper()
	return dialRaw(t, strings.TrimPrefix(f.server.URL, "http://"))
}

// dialRaw opens a client connection to addr, closed when the test ends,
// with a deadline that keeps a hung test from hanging for good.
func dialRaw(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c, bufio.NewReader(c)
}

func readResponse(t *testing.T, br *bufio.Reader, method string) (*http.Response, string) {
	t.Helper()
	res, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res, string(b)
}

// One connection can go from the fast path to net/http (a POST, a head
// too large for the fast path, HTTP/1.0) and keeps working there;
// pipelined requests are answered in order.
func TestServer_HandOff(t *testing.T) {
	f := newFixture(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %s", r.Method, r.RequestURI, b)
	}))
	tok := f.token("bk_1")
	c, br := f.rawConn(t)
	get := "GET /" + tok + "/a HTTP/1.1\r\nHost: x\r\n\r\n"
	// Two pipelined GETs, both on the fast path.
	io.WriteString(c, get+get)
	for range 2 {
		if _, body := readResponse(t, br, "GET"); body != "GET /a " {
			t.Fatalf("pipelined GET: body %q", body)
		}
	}
	// A POST hands the connection off, with a GET pipelined behind it.
	io.WriteString(c, "POST /"+tok+"/b HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody"+get)
	if _, body := readResponse(t, br, "POST"); body != "POST /b body" {
		t.Fatalf("POST: body %q", body)
	}
	if _, body := readResponse(t, br, "GET"); body != "GET /a " {
		t.Fatalf("GET after hand-off: body %q", body)
	}

	// A head larger than the fast path's buffer.
	c2, br2 := f.rawConn(t)
	big := strings.Repeat("c", clientReadSize)
	io.WriteString(c2, "GET /"+tok+"/big HTTP/1.1\r\nHost: x\r\nCookie: "+big+"\r\n\r\n")
	if res, body := readResponse(t, br2, "GET"); res.StatusCode != 200 || body != "GET /big " {
		t.Fatalf("large head: %d %q", res.StatusCode, body)
	}

	// HTTP/1.0.
	c3, br3 := f.rawConn(t)
	io.WriteString(c3, "GET /"+tok+"/old HTTP/1.0\r\n\r\n")
	if res, body := readResponse(t, br3, "GET"); res.StatusCode != 200 || body != "GET /old " {
		t.Fatalf("HTTP/1.0: %d %q", res.StatusCode, body)
	}

	// A malformed head: net/http answers it.
	c4, br4 := f.rawConn(t)
	io.WriteString(c4, "GET /"+tok+"/x HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n")
	if res, _ := readResponse(t, br4, "GET"); res.StatusCode != http.StatusBadRequest {
		t.Fatalf("malformed head: %d, want 400", res.StatusCode)
	}
}

// rawBackend serves each connection's requests with reply, which writes a
// raw response and reports whether to keep the connection.
func rawBackend(t *testing.T, reply func(w io.Writer, req *http.Request) bool) string {
	t.Helper()
	return rawListener(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil || !reply(c, req) {
				return
			}
		}
	})
}

// rawListener serves each connection with serve, which owns it until it
// returns, until the test ends; it returns the listener's address.
func rawListener(t *testing.T, serve func(c net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				serve(c)
			}()
		}
	}()
	return ln.Addr().String()
}

// Response framings the fast path relays: length, chunked with trailers,
// until close, and none (HEAD, 204, 304).
func TestServer_ResponseFraming(t *testing.T) {
	f := newFixture(t, http.NotFoundHandler())
	addr := rawBackend(t, func(w io.Writer, req *http.Request) bool {
		switch req.URL.Path {
		case "/length":
			io.WriteString(w, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nKeep-Alive: timeout=5\r\n\r\nhello")
		case "/chunked":
			io.WriteString(w, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 42\r\n\r\n")
		case "/close":
			io.WriteString(w, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close")
			return false
		case "/http10":
			io.WriteString(w, "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
			return false
		case "/nocontent":
			io.WriteString(w, "HTTP/1.1 204 No Content\r\n\r\n")
		case "/bad":
			io.WriteString(w, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!")
			return false
		}
		return true
	})
	f.resolver.mu.Lock()
	route := f.resolver.routes["bk_1"]
	route.Addr = addr
	f.resolver.routes["bk_1"] = route
	f.resolver.mu.Unlock()
	tok := f.token("bk_1")

	c, br := f.rawConn(t)
	for _, tt := range []struct{ path, body string }{
		{"/length", "hello"}, {"/chunked", "hello world"}, {"/nocontent", ""}, {"/http10", "ok"}, {"/length", "hello"},
	} {
		io.WriteString(c, "GET /"+tok+tt.path+" HTTP/1.1\r\nHost: x\r\n\r\n")
		res, body := readResponse(t, br, "GET")
		if body != tt.body || res.Close {
			t.Fatalf("%s: body %q close %v, want %q on a kept connection", tt.path, body, res.Close, tt.body)
		}
		if res.Header["Keep-Alive"] != nil {
			t.Errorf("%s: hop-by-hop Keep-Alive passed on", tt.path)
		}
		if tt.path == "/chunked" && res.Trailer.Get("X-Sum") != "42" {
			t.Errorf("chunked: trailer %v, want X-Sum: 42", res.Trailer)
		}
	}
	io.WriteString(c, "HEAD /"+tok+"/length HTTP/1.1\r\nHost: x\r\n\r\n")
	if res, body := readResponse(t, br, "HEAD"); res.ContentLength != 5 || body != "" {
		t.Fatalf("HEAD: length %d body %q", res.ContentLength, body)
	}
	// A body that ends with the backend's connection ends the client's.
	io.WriteString(c, "GET /"+tok+"/close HTTP/1.1\r\nHost: x\r\n\r\n")
	if res, body := readResponse(t, br, "GET"); body != "until close" || !res.Close {
		t.Fatalf("close-delimited: body %q close %v", body, res.Close)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("after a close-delimited body: %v, want EOF", err)
	}

	c2, br2 := f.rawConn(t)
	io.WriteString(c2, "GET /"+tok+"/bad HTTP/1.1\r\nHost: x\r\n\r\n")
	if res, _ := readResponse(t, br2, "GET"); res.StatusCode != http.StatusBadGateway {
		t.Fatalf("conflicting lengths: %d, want 502", res.StatusCode)
	}
}

// A client asking to close gets Connection: close and a closed connection.
func TestServer_ConnectionClose(t *testing.T) {
	f := newFixture(t, http.HandlerFunc(echoURI))
	c, br := f.rawConn(t)
	io.WriteString(c, "GET /"+f.token("bk_1")+"/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	res, body := readResponse(t, br, "GET")
	if body != "/x" || !res.Close {
		t.Fatalf("body %q close %v", body, res.Close)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("after Connection: close: %v, want EOF", err)
	}
}

// Idle connections, and connections stuck in the middle of a head, are
// closed after the idle timeout.
func TestServer_IdleTimeout(t *testing.T) {
	f := newFixture(t, http.HandlerFunc(echoURI))
	srv, addr, _ := f.ownServer(t, ServerConfig{IdleTimeout: 200 * time.Millisecond, NoEventLoop: noEventLoop})
	defer srv.Shutdown(context.Background())

	for _, sent := range []string{
		"GET /" + f.token("bk_1") + "/x HTTP/1.1\r\nHost: x\r\n\r\n", // a request, then idle
		"GET /" + f.token("bk_1") + "/x HTTP/1.1\r\nHo",              // half a head
	} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, sent)
		b, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("after %q: %v, want the proxy to close the connection", sent, err)
		}
		if strings.HasSuffix(sent, "\r\n\r\n") != bytes.HasPrefix(b, []byte("HTTP/1.1 200")) {
			t.Fatalf("after %q: read %q", sent, b)
		}
	}
}

// Shutdown lets a request in flight finish and closes idle connections.
func TestServer_Shutdown(t *testing.T) {
	release := make(chan struct{})
	f := newFixture(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-release
		}
		io.WriteString(w, "done")
	}))
	srv, addr, served := f.ownServer(t, ServerConfig{NoEventLoop: noEventLoop})
	dial := func() (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(5 * time.Second))
		return c, bufio.NewReader(c)
	}
	idle, idleBR := dial()
	io.WriteString(idle, "GET /"+f.token("bk_1")+"/fast HTTP/1.1\r\nHost: x\r\n\r\n")
	readResponse(t, idleBR, "GET")
	busy, busyBR := dial()
	io.WriteString(busy, "GET /"+f.token("bk_1")+"/slow HTTP/1.1\r\nHost: x\r\n\r\n")
	waitFor(t, "the slow request to begin", func() bool { return f.activity.begins.Load() == 2 })

	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(context.Background()) }()
	if _, err := idleBR.ReadByte(); err != io.EOF {
		t.Fatalf("idle connection: %v, want EOF", err)
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a request in flight", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	if res, body := readResponse(t, busyBR, "GET"); body != "done" || !res.Close {
		t.Fatalf("in-flight request: body %q close %v", body, res.Close)
	}
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-served; err != http.ErrServerClosed {
		t.Fatalf("Serve: %v", err)
	}
}

// FuzzParseTarget checks the fast path's split of a target at its token
// against net/http's reading of the whole head (h1's FuzzParseRequest
// checks the rest of the head).
func FuzzParseTarget(f *testing.F) {
	f.Add([]byte("GET /tok/a?b=c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
	f.Add([]byte("HEAD /tok/ HTTP/1.1\r\nHost: x:80\r\nContent-Length: 0\r\nTe: trailers\r\n\r\n"))
	f.Add([]byte("GET /tok HTTP/1.1\r\nhost: x\r\nX-A:  b \r\n\r\n"))
	f.Add([]byte("GET /t%2fk/ HTTP/1.1\r\nHost: x\r\n\r\n"))
	f.Add([]byte("GET /tok/a/%2e%2E/b//c HTTP/1.1\r\nHost: x\r\n\r\n"))
	f.Fuzz(func(t *testing.T, head []byte) {
		end := h1.IndexHeadEnd(head, 0)
		if end < 0 {
			return
		}
		head = head[:end]
		var r request
		if !r.parse(head) {
			return
		}
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head)))
		if err != nil {
			t.Fatalf("fast path accepted %q; net/http refused it: %v", head, err)
		}
		target := "/" + string(r.token)
		if r.hasRest {
			target += string(r.rest)
		}
		if r.hasQuery {
			target += "?" + string(r.query)
		}
		if r.hasRest && oddPath(r.rest) {
			t.Fatalf("fast path accepted %q, whose path the Proxy must normalize", head)
		}
		if req.Method != string(r.Method) || req.RequestURI != target || req.Host != string(r.Host) ||
			req.ContentLength != 0 || req.Close != r.Close {
			t.Fatalf("%q: net/http read %s %s host %q length %d close %v; fast path %s %s host %q close %v",
				head, req.Method, req.RequestURI, req.Host, req.ContentLength, req.Close, r.Method, target, r.Host, r.Close)
		}
	})
}
