//go:build linux

package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
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

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
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
