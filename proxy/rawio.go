package proxy

import (
	"github.com/berthhq/berth/proxy/internal/rawio"

	"io"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// rawConn reads and writes a non-blocking socket with raw system calls,
// waiting for readiness through the runtime's poller as net.Conn does.
//
// A read or write on a loopback TCP socket does the receiver's work in
// the caller's system call (delivery, wake-up), often for more than
// sysmon's 20 µs: with ordinary system calls the runtime then hands the
// P to another thread and takes it back after, a thread wake-up and a
// context switch per call under load. A raw call keeps the P. It cannot
// block (the socket is non-blocking), so holding the P is bounded by the
// kernel's work for one call.
type rawConn struct {
	net.Conn
	rc syscall.RawConn

	// The calls in progress, one read and one write at most; the
	// callbacks are bound once so that a call allocates nothing.
	rbuf, wbuf     []byte
	rn, wn         int
	rerrno, werrno syscall.Errno
	readF, wrF     func(uintptr) bool
}

// newRawConn wraps c, or returns c itself when it is not a socket.
func newRawConn(c net.Conn) net.Conn {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return c
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return c
	}
	r := &rawConn{Conn: c, rc: rc}
	r.readF, r.wrF = r.read, r.write
	return r
}

func (c *rawConn) read(fd uintptr) bool {
	for {
		n, e := rawio.Read(fd, c.rbuf)
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		case 0:
			c.rn = n
		}
		c.rerrno = e
		return true
	}
}

func (c *rawConn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	c.rbuf, c.rn, c.rerrno = b, 0, 0
	err := c.rc.Read(c.readF)
	c.rbuf = nil
	switch {
	case err != nil:
		return 0, err // closed, or a deadline
	case c.rerrno != 0:
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: c.rerrno}
	case c.rn == 0:
		return 0, io.EOF
	}
	return c.rn, nil
}

func (c *rawConn) write(fd uintptr) bool {
	for len(c.wbuf) > 0 {
		n, e := rawio.Write(fd, c.wbuf)
		switch e {
		case 0:
			c.wbuf = c.wbuf[n:]
			c.wn += n
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			c.werrno = e
			return true
		}
	}
	return true
}

func (c *rawConn) Write(b []byte) (int, error) {
	c.wbuf, c.wn, c.werrno = b, 0, 0
	err := c.rc.Write(c.wrF)
	n := c.wn
	c.wbuf = nil
	switch {
	case err != nil:
		return n, err
	case c.werrno != 0:
		return n, &net.OpError{Op: "write", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: c.werrno}
	}
	return n, nil
}
