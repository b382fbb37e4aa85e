// Package connqueue is a net.Listener fed by hand: a server that accepted
// (and perhaps read from) a connection gives it to an http.Server, or to
// any other server that takes a Listener, by Put.
package connqueue

import (
	"net"
	"sync"
)

// Queue is a net.Listener whose connections come from Put. The zero value
// is not usable; call New.
type Queue struct {
	addr net.Addr
	c    chan net.Conn
	done chan struct{}
	once sync.Once
}

// New returns an open queue that reports addr as its address.
func New(addr net.Addr) *Queue {
	return &Queue{addr: addr, c: make(chan net.Conn), done: make(chan struct{})}
}

// Put gives c to the queue's server, waiting until it accepts, or reports
// false once the queue is closed (c is then the caller's to close).
func (q *Queue) Put(c net.Conn) bool {
	select {
	case q.c <- c:
		return true
	case <-q.done:
		return false
	}
}

// Accept implements net.Listener.
func (q *Queue) Accept() (net.Conn, error) {
	select {
	case c := <-q.c:
		return c, nil
	case <-q.done:
		return nil, net.ErrClosed
	}
}

// Close implements net.Listener: Accept and Put return at once after it.
func (q *Queue) Close() error {
	q.once.Do(func() { close(q.done) })
	return nil
}

// Addr implements net.Listener.
func (q *Queue) Addr() net.Addr { return q.addr }
