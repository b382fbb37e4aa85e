//go:build linux

package proxy

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"testing"
	"time"
)

// On Linux, the Server's event loops hold its fast-path connections; a
// connection handed off to wait for its backend gets a goroutine, and goes
// back to a loop once that request is answered.
func TestServer_EventLoop(t *testing.T) {
	f := newFixture(t, http.HandlerFunc(echoURI))
	srv, addr, _ := f.ownServer(t, ServerConfig{})
	defer srv.Shutdown(t.Context())
	goroutines := func() int {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		return len(srv.conns)
	}

	c, br := dialRaw(t, addr)
	io.WriteString(c, "GET /"+f.token("bk_1")+"/x HTTP/1.1\r\nHost: x\r\n\r\n")
	if res, body := readResponse(t, br, "GET"); res.StatusCode != 200 || body != "/x" {
		t.Fatalf("got %d %q", res.StatusCode, body)
	}
	if srv.loops == nil || goroutines() != 0 {
		t.Fatalf("loops %v, %d connections with goroutines; want the loops to hold the connection", srv.loops, goroutines())
	}

	ready := f.starting("bk_1")
	io.WriteString(c, "GET /"+f.token("bk_1")+"/y HTTP/1.1\r\nHost: x\r\n\r\n")
	waitFor(t, "a goroutine to wait for the backend", func() bool { return goroutines() == 1 })
	f.resolver.mu.Lock()
	delete(f.resolver.starting, "bk_1")
	f.resolver.mu.Unlock()
	close(ready)
	if res, body := readResponse(t, br, "GET"); res.StatusCode != 200 || body != "/y" {
		t.Fatalf("got %d %q", res.StatusCode, body)
	}
	waitFor(t, "the connection to rejoin a loop", func() bool { return goroutines() == 0 })
	for _, path := range []string{"/z", "/zz"} {
		io.WriteString(c, "GET /"+f.token("bk_1")+path+" HTTP/1.1\r\nHost: x\r\n\r\n")
		if res, body := readResponse(t, br, "GET"); res.StatusCode != 200 || body != path {
			t.Fatalf("after rejoining: got %d %q, want 200 %q", res.StatusCode, body, path)
		}
	}
}

// A request pipelined behind one that waits for a start is still in the
// kernel's buffer when the connection rejoins a loop: the loop answers it,
// in order.
func TestServer_RejoinWithBytesInKernel(t *testing.T) {
	f := newFixture(t, http.HandlerFunc(echoURI))
	srv, addr, _ := f.ownServer(t, ServerConfig{})
	defer srv.Shutdown(t.Context())
	started := f.starting("bk_1")
	c, br := dialRaw(t, addr)
	io.WriteString(c, "GET /"+f.token("bk_1")+"/first HTTP/1.1\r\nHost: x\r\n\r\n")
	waitFor(t, "the request to wait for the start", func() bool { return f.resolver.calls.Load() > 0 })
	io.WriteString(c, "GET /"+f.token("bk_1")+"/second HTTP/1.1\r\nHost: x\r\n\r\n")
	f.resolver.mu.Lock()
	delete(f.resolver.starting, "bk_1")
	f.resolver.mu.Unlock()
	close(started)
	for _, want := range []string{"/first", "/second"} {
		if res, body := readResponse(t, br, "GET"); res.StatusCode != 200 || body != want {
			t.Fatalf("got %d %q, want 200 %q", res.StatusCode, body, want)
		}
	}
}

// readyless is a Resolver without ResolveReady, which the API allows: a
// loop must hand every request to a goroutine to resolve it.
type readyless struct{ r *resolver }

func (r readyless) Resolve(ctx context.Context, id string) (Route, error) {
	return r.r.Resolve(ctx, id)
}

// Such a connection stays with its goroutine rather than rejoining a loop
// after each answer only to be handed off again.
func TestServer_NoRejoinWithoutResolveReady(t *testing.T) {
	f := newFixture(t, http.HandlerFunc(echoURI))
	f.proxy.cfg.Resolver = readyless{f.resolver}
	srv, addr, _ := f.ownServer(t, ServerConfig{})
	defer srv.Shutdown(t.Context())
	c, br := dialRaw(t, addr)
	for i := range 3 {
		path := "/" + strconv.Itoa(i)
		io.WriteString(c, "GET /"+f.token("bk_1")+path+" HTTP/1.1\r\nHost: x\r\n\r\n")
		if res, body := readResponse(t, br, "GET"); res.StatusCode != 200 || body != path {
			t.Fatalf("got %d %q, want 200 %q", res.StatusCode, body, path)
		}
		time.Sleep(20 * time.Millisecond) // time enough to rejoin, were it going to
		srv.mu.Lock()
		n := len(srv.conns)
		srv.mu.Unlock()
		if n != 1 {
			t.Fatalf("after request %d, %d connections on goroutines; want it kept on its goroutine", i, n)
		}
	}
}
