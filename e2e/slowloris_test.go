package e2e

import (
	"io"
	"net"
	"net/url"
	"testing"
	"time"
)

// TestControlAPI_SlowHeaders: a client that sends half a request head and
// stalls (slowloris) has its connection closed by the control API after
// its header timeout (10 s), not held open forever.
func TestControlAPI_SlowHeaders(t *testing.T) {
	t.Parallel()
	s := start(t, opts{serve: true, apiKey: "k"})
	u, err := url.Parse(s.API)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET /v1/backends HTTP/1.1\r\nHost: x\r\nX-Slow: "); err != nil {
		t.Fatal(err)
	}
	sent := time.Now()
	c.SetReadDeadline(time.Now().Add(40 * time.Second))
	_, err = io.ReadAll(c) // until the server closes it
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("a half-sent request head held its connection open for 40 s; want it closed after the 10 s header timeout")
	}
	if held := time.Since(sent); held < 9*time.Second {
		t.Errorf("connection closed after %v, before the 10 s header timeout", held)
	}
}
