package proxy

import (
	"net"

	"github.com/berthhq/berth/proxy/internal/evloop"
	"github.com/berthhq/berth/proxy/internal/h1"
)

// loopHandler is the Server as its event loops see it (evloop.Handler).
type loopHandler struct{ s *Server }

func (h loopHandler) NewExchange(clientIP string) evloop.Exchange {
	return &exchange{p: h.s.p, clientIP: clientIP}
}

// HandOff serves a connection a loop gave away: from a goroutine of the
// goroutine path when its request must wait, else from net/http.
func (h loopHandler) HandOff(c net.Conn, prefix []byte, parsed bool) {
	hc := &handoffConn{Conn: c, prefix: prefix}
	if parsed {
		h.s.track(hc)
		return
	}
	// Not in the loop's goroutine: net/http may take its time to accept.
	go func() {
		if !h.s.handoff.Put(hc) {
			hc.Close()
		}
	}()
}

// exchange is a loop connection's requests: what clientConn.forward does
// for the goroutine path, without the sockets.
type exchange struct {
	p        *Proxy
	clientIP string
	verified verified // the connection's last good token
	req      request
	fw       forward  // the request in flight's
	activity Activity // begun for it, not yet ended
}

func (x *exchange) Begin(head []byte, out *h1.OutBuf) evloop.Next {
	if !x.req.parse(head) {
		return evloop.Next{Action: evloop.Refuse}
	}
	next := evloop.Next{Action: evloop.Answered, Head: x.req.Head, Close: x.req.Close}
	redirect, err := x.p.admit(&x.req, &x.verified, &x.fw)
	switch {
	case err != nil:
		x.p.writeFastError(out, &x.req, err)
		return next
	case redirect:
		writeRedirect(out, &x.req)
		return next
	case x.fw.route.Addr == "":
		next.Action = evloop.Wait
		return next
	}
	if err := checkAdded(&x.fw); err != nil {
		x.p.writeFastError(out, &x.req, badGateway(&x.fw, err))
		return next
	}
	if a := x.fw.route.Activity; a != nil {
		a.Begin()
		x.activity = a
	}
	next.Action, next.Addr = evloop.Forward, x.fw.route.Addr
	return next
}

func (x *exchange) WriteRequest(out *h1.OutBuf) {
	writeFastRequest(out, &x.req, &x.fw, x.clientIP, false)
}

func (x *exchange) BadGateway(out *h1.OutBuf, err error) {
	x.p.writeFastError(out, &x.req, badGateway(&x.fw, err))
}

func (x *exchange) Aborted(err error) {
	gone := err == nil
	if gone {
		err = errClientGone
	}
	x.p.log.Debug("proxy: response aborted", "backend", x.fw.claims.BackendID, "err", err, "client_gone", gone)
}

func (x *exchange) End() {
	if x.activity != nil {
		x.activity.End()
		x.activity = nil
	}
	x.fw = forward{} // holds nothing of a backend between requests
}
