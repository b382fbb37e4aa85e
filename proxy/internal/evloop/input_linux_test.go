package evloop

import (
	"testing"

	"golang.org/x/sys/unix"
)

// An idle client connection gives its read buffer back to the loop, and
// takes one again when the client speaks.
func TestLoop_IdleConnectionHoldsNoReadBuffer(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	l := &loop{g: &Group{cfg: testConfig(nil)}}
	clientReadSize := l.g.cfg.ClientReadSize
	c := &lconn{fd: fds[0], in: make([]byte, clientReadSize)}
	buf := &c.in[0]

	if l.readHead(c) || c.in != nil || len(l.inFree.bufs) != 1 {
		t.Fatalf("idle: in %d bytes, %d free; want the buffer with the loop", len(c.in), len(l.inFree.bufs))
	}
	if _, err := unix.Write(fds[1], []byte("GET /")); err != nil {
		t.Fatal(err)
	}
	c.readable = true
	if !l.readHead(c) || len(c.in) != clientReadSize || &c.in[0] != buf || len(l.inFree.bufs) != 0 || string(c.in[c.start:c.end]) != "GET /" {
		t.Fatalf("readable: in %d bytes holding %q, %d free; want the loop's buffer back with what was sent", len(c.in), c.in[c.start:c.end], len(l.inFree.bufs))
	}
	// Half a head is not idle: the buffer stays.
	if l.readHead(c) || c.in == nil {
		t.Fatal("a connection with half a head lost its read buffer")
	}

	// Woken with nothing to read (edge-triggered epoll may say readable
	// for bytes an earlier read took): still idle, no buffer.
	idle := &lconn{fd: fds[1], readable: true}
	if l.readHead(idle) || idle.in != nil || idle.readable {
		t.Errorf("woken for nothing: in %d bytes, readable %v; want no buffer, not readable", len(idle.in), idle.readable)
	}

	// The loop keeps at most 64.
	for range 70 {
		l.releaseInput(&lconn{in: make([]byte, clientReadSize)})
	}
	if len(l.inFree.bufs) != 64 {
		t.Errorf("the loop keeps %d free read buffers, want 64", len(l.inFree.bufs))
	}
}
