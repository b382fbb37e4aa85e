package proxy

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"
)

func TestForwarder_Pool(t *testing.T) {
	f := &forwarder{idleTimeout: 20 * time.Millisecond, maxIdle: 2}
	var peers []net.Conn
	for range 3 {
		c, peer := net.Pipe()
		peers = append(peers, peer)
		f.put(&backendConn{Conn: c, addr: "a:1"})
	}
	if n := len(f.idle["a:1"]); n != 2 {
		t.Fatalf("%d idle connections, want maxIdle 2", n)
	}
	// closed reports whether the pooled end of peer is closed.
	closed := func(peer net.Conn) bool {
		peer.SetReadDeadline(time.Now().Add(time.Millisecond))
		_, err := peer.Read(make([]byte, 1))
		return err != nil && !errors.Is(err, os.ErrDeadlineExceeded)
	}
	if !closed(peers[2]) {
		t.Error("the connection over maxIdle was kept open")
	}
	waitFor(t, "idle connections pruned", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return len(f.idle) == 0 && f.pruner == nil
	})
	for i, p := range peers[:2] {
		if !closed(p) {
			t.Errorf("pruned connection %d is still open", i)
		}
	}
}
