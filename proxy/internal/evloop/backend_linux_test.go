//go:build linux

package evloop

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
	g := &Group{cfg: testConfig(nil)}
	l := &loop{g: g, idle: make(map[string][]*lbackend), maxIdle: 4, fds: make([]fdOwner, fds[0]+1)}
	b := &lbackend{fd: fds[0], addr: addr, in: make([]byte, g.cfg.BackendReadSize)}
	buf := &b.in[0]

	l.putIdle(b)
	if b.in != nil || len(l.beFree.bufs) != 1 || len(l.idle[addr]) != 1 {
		t.Fatalf("idle: in %d bytes, %d free, %d idle; want the buffer with the loop", len(b.in), len(l.beFree.bufs), len(l.idle[addr]))
	}

	c := &lconn{addr: addr, x: &testExchange{}}
	if !l.connect(c) || c.be != b || !c.reused {
		t.Fatal("the request did not reuse the idle connection")
	}
	if len(b.in) != g.cfg.BackendReadSize || &b.in[0] != buf || len(l.beFree.bufs) != 0 {
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

// After a spike the loop's connection map and descriptor table are remade
// at their present size, keeping every entry.
func TestLoop_ShrinkAfterSpike(t *testing.T) {
	l := &loop{conns: make(map[*lconn]struct{})}
	var keep []*lconn
	for i := range 4 * shrinkMin {
		c := &lconn{fd: i}
		l.conns[c] = struct{}{}
		if i%100 == 0 {
			keep = append(keep, c)
		}
	}
	l.peak = len(l.conns)
	l.fds = make([]fdOwner, 8*shrinkMin)
	l.fds[10] = fdOwner{c: keep[0]}
	l.fds[8*shrinkMin-1] = fdOwner{c: keep[1]}

	l.shrink() // nothing went: nothing changes
	if l.peak != 4*shrinkMin || len(l.fds) != 8*shrinkMin {
		t.Fatalf("peak %d, %d descriptors after a sweep with nothing gone", l.peak, len(l.fds))
	}

	for c := range l.conns {
		if c.fd%100 != 0 {
			delete(l.conns, c)
		}
	}
	l.fds[8*shrinkMin-1] = fdOwner{}
	l.shrink()
	if len(l.conns) != len(keep) || l.peak != len(keep) {
		t.Errorf("%d connections, peak %d after the shrink; want %d and %d", len(l.conns), l.peak, len(keep), len(keep))
	}
	for _, c := range keep {
		if _, ok := l.conns[c]; !ok {
			t.Fatalf("connection %d lost in the shrink", c.fd)
		}
	}
	if len(l.fds) != 11 || l.fds[10].c != keep[0] {
		t.Errorf("%d descriptors after the shrink (fd 10 owned by %v); want 11, fd 10 kept", len(l.fds), l.fds[10].c)
	}
}
