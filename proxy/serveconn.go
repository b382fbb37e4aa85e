package proxy

import (
	"net"
	"time"

	"github.com/berthhq/berth/proxy/internal/h1"
)

// ConnHooks are how the owner of a connection given to ServeConn (the
// edge, for its TLS connections) watches and admits its requests.
type ConnHooks interface {
	// Idle is called before the connection waits for its next request
	// head, the first one included.
	Idle()
	// Admit is asked about each request head the fast path parsed,
	// before its token is looked at.
	Admit(h Head) Admission
	// HandOff takes the connection over for good, for a request the fast
	// path does not serve (a body, an upgrade, HTTP/1.0, a path to
	// clean, a head too large for it, or one Admit handed off): c reads
	// first the bytes of that request already read. The owner serves it
	// with net/http and Proxy.Hosts (or the Proxy) as handler.
	HandOff(c net.Conn)
}

// Admission is ConnHooks.Admit's answer.
type Admission struct {
	// HandOff hands the connection to ConnHooks.HandOff, this request
	// included (for an answer that net/http's path gives).
	HandOff bool
	// Refuse, if set, is the whole response to answer with instead of
	// forwarding the request; the connection stays open unless the
	// client asked to close it.
	Refuse []byte
	// ClientIP is the client's address for X-Forwarded-For; empty: the
	// connection's remote address.
	ClientIP string
	// HTTPS makes the backend see X-Forwarded-Proto: https.
	HTTPS bool
}

// Head is a request head the fast path parsed, as ConnHooks.Admit sees
// it; valid only during Admit.
type Head struct{ r *request }

// TargetLen is the length of the request target.
func (h Head) TargetLen() int { return len(h.r.Target) }

// HeaderBytes is the size of the header lines but Host, as net/http's
// Request.Header counts them (name, value and 4 bytes each).
func (h Head) HeaderBytes() int {
	n := 0
	for _, x := range h.r.Headers {
		if !h1.FoldIs(x.Name, "Host") {
			n += len(x.Name) + len(x.Value) + 4
		}
	}
	return n
}

// Values returns the values of the header lines named name (in any
// case), in order.
func (h Head) Values(name string) []string {
	var vv []string
	for _, x := range h.r.Headers {
		if h1.FoldIs(x.Name, name) {
			vv = append(vv, string(x.Value))
		}
	}
	return vv
}

// IsHead reports whether the request is a HEAD (its answer has no body).
func (h Head) IsHead() bool { return h.r.Head }

// ServeConn serves c, a client connection accepted elsewhere — the edge's
// TLS connections that negotiated HTTP/1.1 — on the goroutine path, as
// Serve serves its own: GET and HEAD heads parsed in place and forwarded
// over the pooled backend connections; everything else goes, with the
// connection, to hooks.HandOff. It returns when the connection is closed
// or handed off. Shutdown closes it when idle and waits for it.
func (s *Server) ServeConn(c net.Conn, hooks ConnHooks) {
	cc := &clientConn{s: s, c: c, hooks: hooks}
	cc.idleSince.Store(time.Now().UnixNano())
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		c.Close()
		return
	}
	s.conns[cc] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	cc.serve()
}

// RawConn returns c read and written with raw system calls, as the
// proxy's own sockets are (see rawConn), or c itself when it is not a
// socket. The edge puts its TLS connections' records on one: with every
// other cost of a request down to the proxy's, the runtime's system-call
// bookkeeping (a P handed off under load) is a measurable part of what is
// left.
func RawConn(c net.Conn) net.Conn { return newRawConn(c) }
