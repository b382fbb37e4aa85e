//go:build linux

package proxy

import (
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A Shutdown whose context ends after the loops have already stopped (their
// own connections finished, a goroutine-path connection still busy) makes
// abort write to each loop's eventfd, which stop has closed: the write goes
// to whatever file now has that descriptor number.
func TestLoop_AbortWritesToClosedEventfd(t *testing.T) {
	f := newFixture(t, http.HandlerFunc(echoURI))
	ready := f.starting("bk_1")
	defer close(ready)

	srv, addr, _ := f.ownServer(t, ServerConfig{})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /"+f.token("bk_1")+"/wait HTTP/1.1\r\nHost: x\r\n\r\n")
	waitFor(t, "a goroutine waiting for the backend", func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		return len(srv.conns) == 1
	})

	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- srv.Shutdown(ctx) }()

	waitFor(t, "the loops to stop", func() bool {
		for _, l := range srv.loops.loops {
			l.mu.Lock()
			s := l.stopped
			l.mu.Unlock()
			if !s {
				return false
			}
		}
		return true
	})
	victim := takeEventfdNumbers(t, srv)
	<-done // the context ends: abort
	var b [64]byte
	if n, _ := unix.Read(victim, b[:]); n > 0 {
		t.Fatalf("after the loops stopped, abort wrote %q to a descriptor that now belongs to someone else", b[:n])
	}
}

// A second Shutdown (or any wake after the loops stopped) writes to the
// closed eventfds as well.
func TestLoop_SecondShutdownWritesToClosedEventfd(t *testing.T) {
	f := newFixture(t, http.HandlerFunc(echoURI))
	srv, _, _ := f.ownServer(t, ServerConfig{})
	waitFor(t, "the loops", func() bool { srv.mu.Lock(); defer srv.mu.Unlock(); return srv.loops != nil })
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	victim := takeEventfdNumbers(t, srv)
	srv.Shutdown(context.Background())
	var b [64]byte
	if n, _ := unix.Read(victim, b[:]); n > 0 {
		t.Fatalf("a second Shutdown wrote %q to a descriptor that now belongs to someone else", b[:n])
	}
}

// takeEventfdNumbers opens socket pairs until one end has the number of a
// stopped loop's eventfd, and returns the other end: what is written to
// that number can be read there.
func takeEventfdNumbers(t *testing.T, srv *Server) int {
	t.Helper()
	evfds := map[int]bool{}
	for _, l := range srv.loops.loops {
		evfds[l.evfd] = true
	}
	for range 64 {
		sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(sp[0]); unix.Close(sp[1]) })
		for i, fd := range sp {
			if evfds[fd] {
				return sp[1-i]
			}
		}
	}
	t.Fatal("no socket got a stopped loop's eventfd number; the kernel hands out the lowest free one, so something else holds them")
	return -1
}
