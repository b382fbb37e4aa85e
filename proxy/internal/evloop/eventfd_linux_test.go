//go:build linux

package evloop

import (
	"testing"

	"golang.org/x/sys/unix"
)

// Once the loops have stopped, their eventfds are closed and their numbers
// may name other files: neither Abort (a Shutdown whose context ends after
// the loops stopped) nor a second Shutdown may write to them.
func TestGroup_NoWakeAfterStop(t *testing.T) {
	for _, after := range []struct {
		name string
		do   func(*Group)
	}{{"Abort", (*Group).Abort}, {"Shutdown", (*Group).Shutdown}} {
		t.Run(after.name, func(t *testing.T) {
			g, err := Start(testConfig(&testHandler{}))
			if err != nil {
				t.Fatal(err)
			}
			g.Shutdown()
			g.Wait()
			victim := takeEventfdNumbers(t, g)
			after.do(g)
			var b [64]byte
			if n, _ := unix.Read(victim, b[:]); n > 0 {
				t.Fatalf("after the loops stopped, %s wrote %q to a descriptor that now belongs to someone else", after.name, b[:n])
			}
		})
	}
}

// takeEventfdNumbers opens socket pairs until one end has the number of a
// stopped loop's eventfd, and returns the other end: what is written to
// that number can be read there.
func takeEventfdNumbers(t *testing.T, g *Group) int {
	t.Helper()
	evfds := map[int]bool{}
	for _, l := range g.loops {
		l.mu.Lock()
		if !l.stopped {
			t.Fatal("a loop still runs")
		}
		l.mu.Unlock()
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
