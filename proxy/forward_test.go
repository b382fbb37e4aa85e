package proxy

import (
	"errors"
	"io"
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

// A pooled connection holds no buffers; the request that takes it gets
// buffers that work on it.
func TestForwarder_IdleHoldsNoBuffers(t *testing.T) {
	f := &forwarder{idleTimeout: time.Minute, maxIdle: 2}
	defer f.close()
	c, peer := net.Pipe()
	defer peer.Close()
	bc := newBackendConn(c, "a:1")
	bc.borrow()
	f.put(bc)
	if bc.br != nil || bc.bw != nil {
		t.Fatal("an idle connection kept its buffers")
	}
	got, reused, err := f.get(t.Context(), "a:1")
	if err != nil || !reused || got != bc {
		t.Fatalf("get: %v, reused %v, same %v; want the pooled connection", err, reused, got == bc)
	}
	go func() {
		got.bw.WriteString("ping")
		got.bw.Flush()
	}()
	buf := make([]byte, 4)
	if _, err := io.ReadFull(peer, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("the backend read %q, %v; want ping", buf, err)
	}
	go peer.Write([]byte("pong"))
	if s, err := got.br.Peek(4); err != nil || string(s) != "pong" {
		t.Fatalf("the proxy read %q, %v; want pong", s, err)
	}
}
