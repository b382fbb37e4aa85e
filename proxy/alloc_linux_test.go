//go:build linux && !race

package proxy

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"testing"
)

// The event loops forward a request and relay its response without
// allocating: the fast path leaves no garbage per request. Backend and
// client here are raw sockets with fixed buffers, so every allocation the
// count sees is the proxy's.
func TestLoop_ForwardsWithoutAllocating(t *testing.T) {
	const response = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	answer := []byte(response)
	backend := rawListener(t, func(c net.Conn) {
		buf := make([]byte, 4096)
		have := 0
		for {
			n, err := c.Read(buf[have:])
			if err != nil {
				return
			}
			have += n
			for {
				end := bytes.Index(buf[:have], []byte("\r\n\r\n"))
				if end < 0 {
					break
				}
				if _, err := c.Write(answer); err != nil {
					return
				}
				have = copy(buf, buf[end+4:have])
			}
		}
	})

	f := newFixture(t, http.NotFoundHandler())
	f.resolver.mu.Lock()
	route := f.resolver.routes["bk_1"]
	route.Addr = backend
	f.resolver.routes["bk_1"] = route
	f.resolver.mu.Unlock()
	_, addr, _ := f.ownServer(t, ServerConfig{})
	c, _ := dialRaw(t, addr)
	req := []byte("GET /" + f.token("bk_1") + "/x HTTP/1.1\r\nHost: x\r\n\r\n")
	res := make([]byte, len(response))
	roundTrip := func() {
		if _, err := c.Write(req); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, res); err != nil {
			t.Fatal(err)
		}
	}
	for range 200 { // pools, buffers and the token cache settle
		roundTrip()
	}
	if string(res) != response {
		t.Fatalf("the proxy answered %q, want the backend's %q", res, response)
	}
	if n := testing.AllocsPerRun(2000, roundTrip); n != 0 {
		t.Errorf("%v allocations per proxied request, want none", n)
	}
}
