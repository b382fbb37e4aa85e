//go:build linux

package proxy

import (
	"testing"

	"golang.org/x/sys/unix"
)

// A pooled backend connection gives its read buffer back to the loop, takes
// one again for its next request, and a closed one gives it back too.
func TestLoop_IdleBackendHoldsNoReadBuffer(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[1])
	const addr = "127.0.0.1:1"
	l := &loop{s: &Server{}, idle: make(map[string][]*lbackend), maxIdle: 4, fds: make([]fdOwner, fds[0]+1)}
	b := &lbackend{fd: fds[0], addr: addr, in: make([]byte, backendReadSize)}
	buf := &b.in[0]

	l.putIdle(b)
	if b.in != nil || len(l.beFree.bufs) != 1 || len(l.idle[addr]) != 1 {
		t.Fatalf("idle: in %d bytes, %d free, %d idle; want the buffer with the loop", len(b.in), len(l.beFree.bufs), len(l.idle[addr]))
	}

	c := &lconn{fw: &forward{route: Route{Addr: addr}}}
	if !c.req.parse([]byte("GET /tok/ HTTP/1.1\r\nHost: x\r\n\r\n")) {
		t.Fatal("the request did not parse")
	}
	if !l.connect(c) || c.be != b || !c.reused {
		t.Fatal("the request did not reuse the idle connection")
	}
	if len(b.in) != backendReadSize || &b.in[0] != buf || len(l.beFree.bufs) != 0 {
		t.Fatalf("in use: in %d bytes, %d free; want the loop's buffer back", len(b.in), len(l.beFree.bufs))
	}

	l.closeBackend(b)
	if b.in != nil || len(l.beFree.bufs) != 1 {
		t.Fatalf("closed: in %d bytes, %d free; want the buffer with the loop", len(b.in), len(l.beFree.bufs))
	}
}

// A sweep drops the spare buffers no connection took since the sweep before.
func TestFreeBufs_TrimDropsUnusedSpares(t *testing.T) {
	var f freeBufs
	for range maxFreeBufs + 6 {
		f.put(make([]byte, 1))
	}
	if len(f.bufs) != maxFreeBufs {
		t.Fatalf("%d spares kept, want at most %d", len(f.bufs), maxFreeBufs)
	}
	f.trim() // the start of the first interval
	// Two are in use at once during the next one.
	a, b := f.get(1), f.get(1)
	f.put(a)
	f.put(b)
	if f.trim(); len(f.bufs) != 2 {
		t.Fatalf("%d spares after a sweep that needed 2, want 2", len(f.bufs))
	}
	if f.trim(); len(f.bufs) != 0 {
		t.Fatalf("%d spares after a sweep that needed none, want 0", len(f.bufs))
	}
	if got := f.get(7); len(got) != 7 {
		t.Fatalf("an empty list gave a %d-byte buffer, want a new one of 7", len(got))
	}
}
