// Package evloop serves the proxy's fast path from event loops on Linux:
// each loop is one goroutine with an epoll instance of its own, holding
// client connections and the backend connections it forwards them to.
//
// The loops know HTTP/1.1 framing (through h1) and sockets; what a request
// means — its token, its backend, its answer when something fails — they
// ask of the proxy through Handler and Exchange. A request a loop cannot
// serve without blocking, or whose head it does not parse, goes back to the
// proxy with the connection (Handler.HandOff).
package evloop

import (
	"log/slog"
	"net"
	"time"

	"github.com/berthhq/berth/proxy/internal/h1"
)

// Handler is the proxy, as the loops see it.
type Handler interface {
	// NewExchange returns the state of a new client connection's requests.
	NewExchange(clientIP string) Exchange
	// HandOff takes a connection the loop gives away, with the bytes the
	// loop read from it and did not consume, which must be read first.
	// parsed: the loop parsed its request head, and the request must wait
	// (for a backend to start, for a name to resolve); otherwise the head
	// is one only net/http serves. It is called from a loop's goroutine
	// and must not block.
	HandOff(c net.Conn, prefix []byte, parsed bool)
}

// Exchange is one client connection's requests, one at a time, as the
// proxy sees them. A loop calls it from its own goroutine only.
type Exchange interface {
	// Begin starts the request whose head is head (up to and including its
	// blank line), which stays valid until the request ends. It writes any
	// answer of its own to out and says what the loop does next.
	Begin(head []byte, out *h1.OutBuf) Next
	// WriteRequest writes the request for the backend; it may be called
	// again when a reused backend connection turns out to be closed.
	WriteRequest(out *h1.OutBuf)
	// BadGateway writes the answer to a request whose backend failed
	// before its response started.
	BadGateway(out *h1.OutBuf, err error)
	// Aborted notes a response cut short after it started: err is the
	// backend's failure, or nil when the client went away.
	Aborted(err error)
	// End ends the request begun last, if it has not ended: it was
	// answered, or its connection closed or was handed off.
	End()
}

// Next is what a loop does with a request Begin started.
type Next struct {
	Action Action
	Addr   string // Forward: the backend's address
	Head   bool   // a HEAD request: its response has no body
	Close  bool   // close the client connection after the answer
}

type Action int

const (
	// Answered: Begin wrote the whole answer to out.
	Answered Action = iota
	// Forward the request to Next.Addr.
	Forward
	// Wait: the request must wait for its backend; a goroutine of the
	// proxy's takes the connection (HandOff, parsed).
	Wait
	// Refuse: not a head the loop serves; net/http takes the connection
	// (HandOff, not parsed).
	Refuse
)

// Config configures a Group. The sizes and times are the proxy's own, so
// that a connection fares the same on either of its paths.
type Config struct {
	Handler Handler
	Log     *slog.Logger
	// IdleTimeout closes a client connection that has not sent a whole
	// request head for this long; the loops look every SweepTick.
	IdleTimeout time.Duration
	SweepTick   time.Duration
	// ClientReadSize bounds a request head; BackendReadSize a response
	// head.
	ClientReadSize  int
	BackendReadSize int
	// MaxIdlePerBackend bounds the idle connections to one backend address,
	// across all loops; BackendIdleTimeout closes those idle for longer.
	MaxIdlePerBackend  int
	BackendIdleTimeout time.Duration
	// WatchAfter is how old a request must be before a client that went
	// away ends it; a younger one is left to finish.
	WatchAfter time.Duration
}
