package edge

import (
	"context"
	"net"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// listenAndDial opens a listener with Listen and a connection to it,
// both closed when t ends.
func listenAndDial(t *testing.T) (net.Listener, net.Conn) {
	t.Helper()
	ln, err := Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return ln, c
}

// Accepted connections inherit the listening socket's keep-alive.
func TestListen_KeepAlive(t *testing.T) {
	ln, c := listenAndDial(t)
	c.Write([]byte("x")) // the listener defers Accept until the first bytes
	a, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	rc, err := a.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range []struct {
		name       string
		level, opt int
		want       int
	}{
		{"SO_KEEPALIVE", unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
		{"TCP_KEEPIDLE", unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, int(keepAliveIdle.Seconds())},
		{"TCP_KEEPINTVL", unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, int(keepAliveInterval.Seconds())},
		{"TCP_KEEPCNT", unix.IPPROTO_TCP, unix.TCP_KEEPCNT, keepAliveCount},
	} {
		var got int
		var gerr error
		rc.Control(func(fd uintptr) { got, gerr = unix.GetsockoptInt(int(fd), o.level, o.opt) })
		if gerr != nil || got != o.want {
			t.Errorf("accepted socket's %s = %d (%v), want %d", o.name, got, gerr, o.want)
		}
	}
}

// The listener hands out a connection once its client has sent something,
// not at the end of the TCP handshake (TCP_DEFER_ACCEPT).
func TestListen_DeferAccept(t *testing.T) {
	ln, c := listenAndDial(t)
	tl := ln.(*net.TCPListener)
	tl.SetDeadline(time.Now().Add(300 * time.Millisecond))
	if a, err := tl.Accept(); err == nil {
		a.Close()
		t.Fatal("accepted a connection that had sent nothing")
	}
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	tl.SetDeadline(time.Now().Add(10 * time.Second))
	a, err := tl.Accept()
	if err != nil {
		t.Fatalf("accept after the client spoke: %v", err)
	}
	defer a.Close()
	buf := make([]byte, 5)
	a.SetReadDeadline(time.Now().Add(time.Second))
	if n, err := a.Read(buf); err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("first read = %q, %v; want the bytes already there", buf[:n], err)
	}
}
