//go:build linux

package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
)

// A connection whose request waited for a start goes back to an event loop
// once that request is answered, and the loop serves its next ones.
func TestServer_WaitedConnectionRejoinsLoop(t *testing.T) {
	f := newFixture(t, http.HandlerFunc(echoURI))
	srv, addr, _ := f.ownServer(t, ServerConfig{})
	goroutineConns := func() int {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		return len(srv.conns)
	}
	started := f.starting("bk_1")
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	get := func(path string) string {
		t.Helper()
		fmt.Fprintf(c, "GET /%s%s HTTP/1.1\r\nHost: x\r\n\r\n", f.token("bk_1"), path)
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d %s", path, res.StatusCode, b)
		}
		return string(b)
	}

	answered := make(chan string, 1)
	go func() { answered <- get("/first") }()
	waitFor(t, "the request to wait for the start", func() bool { return f.resolver.calls.Load() > 0 })
	if n := goroutineConns(); n != 1 {
		t.Fatalf("%d connections on goroutines while a request waits, want 1", n)
	}
	f.resolver.mu.Lock()
	delete(f.resolver.starting, "bk_1")
	f.resolver.mu.Unlock()
	close(started)
	if got := <-answered; got != "/first" {
		t.Fatalf("first answer %q", got)
	}
	waitFor(t, "the connection to rejoin a loop", func() bool { return goroutineConns() == 0 })
	for _, path := range []string{"/second", "/third"} {
		if got := get(path); got != path {
			t.Fatalf("answer %q, want %q", got, path)
		}
	}
}
