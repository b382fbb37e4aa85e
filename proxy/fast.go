package proxy

import (
	"github.com/berthhq/berth/proxy/internal/h1"

	"bytes"
	"fmt"

	"github.com/berthhq/berth/token"
)

// request is a request head parsed in place by the Server's fast path,
// with its target split at the token. Its slices point into the
// connection's read buffer and are valid until the head is discarded.
type request struct {
	h1.Request
	// label is the host label, as written, of a request routed by its
	// host (<label>.<suffix>); nil for one routed by its path.
	label []byte
	// token is the path's first segment; on a backend's host, the
	// cookie's token once admitHost has found it.
	token []byte
	// rest is the path after the token, from its slash; raw. On a
	// backend's host, the whole path.
	rest     []byte
	hasRest  bool
	query    []byte // raw, without '?'
	hasQuery bool
}

// parse parses an HTTP/1.1 GET or HEAD head without a body. It reports
// false for anything else, and for anything it does not fully understand,
// which then goes to net/http.
func (r *request) parse(b []byte) bool {
	return r.Request.Parse(b) && r.parseTarget()
}

// parseRouted is parse on a server that routes <label><dotSuffix> by its
// host (Proxy.Hosts): such a request's target is the backend's path as it
// is; any other request is routed by its path.
func (r *request) parseRouted(b []byte, dotSuffix string) bool {
	if !r.Request.Parse(b) {
		return false
	}
	label, ok := hostLabel(dotSuffix, r.Host)
	if !ok {
		return r.parseTarget()
	}
	r.label = label
	return r.parseHostTarget()
}

// parseTarget splits /<token>/<rest>?<query>. It leaves to net/http what
// net/http would treat differently (escapes inside the token) and what the
// Proxy normalizes or refuses there (see path.go): dot-segments, empty
// segments, escaped slashes.
func (r *request) parseTarget() bool {
	t := r.Target
	if len(t) < 2 {
		return false
	}
	r.label, r.token, r.rest, r.hasRest, r.query, r.hasQuery = nil, nil, nil, false, nil, false
	path := t
	if q := bytes.IndexByte(t, '?'); q >= 0 {
		path, r.query, r.hasQuery = t[:q], t[q+1:], true
	}
	if j := bytes.IndexByte(path[1:], '/'); j >= 0 {
		r.token, r.rest, r.hasRest = path[1:1+j], path[1+j:], true
	} else {
		r.token = path[1:]
	}
	return bytes.IndexByte(r.token, '%') < 0 && !(r.OddPath && oddPath(r.rest))
}

// parseHostTarget splits <path>?<query> for a request on a backend's host.
// A first segment that may be a token (token.Plausible) goes in token:
// the first request of a session, if it verifies. It leaves to net/http
// (hostRouter) a path it would clean.
func (r *request) parseHostTarget() bool {
	t := r.Target
	r.token, r.rest, r.hasRest, r.query, r.hasQuery = nil, t, true, nil, false
	if q := bytes.IndexByte(t, '?'); q >= 0 {
		r.rest, r.query, r.hasQuery = t[:q], t[q+1:], true
	}
	if first, _, _ := bytes.Cut(r.rest[1:], []byte{'/'}); token.Plausible(first) {
		r.token = first
	}
	return !(r.OddPath && oddPath(r.rest))
}

// dropRequestHeaderBytes is dropRequestHeader for a name in any case.
func dropRequestHeaderBytes(k []byte) bool {
	for _, h := range droppedRequestHeaders {
		if h1.FoldIs(k, h) {
			return true
		}
	}
	return isBerthHeader(k)
}

var droppedRequestHeaders = [...]string{
	"Content-Length", "Expect", "Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto",
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// writeFastRequest writes req to the backend as writeRequest does for a
// net/http request.
// https says the client's connection is TLS (X-Forwarded-Proto).
func writeFastRequest(bw h1.Writer, req *request, fw *forward, clientIP string, https bool) {
	bw.Write(req.Method)
	bw.WriteByte(' ')
	switch {
	case req.label != nil && fw.route.Peer:
		// As net/http's path: the peer routes by the token, which the
		// cookie that carried it no longer holds.
		bw.WriteByte('/')
		bw.Write(req.token)
		bw.Write(req.Target)
	case req.label != nil, fw.route.Peer:
		bw.Write(req.Target)
	default:
		bw.Write(req.rest)
		if req.hasQuery {
			bw.WriteByte('?')
			bw.Write(req.query)
		}
	}
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.Write(req.Host)
	bw.WriteString("\r\n")
	for _, h := range req.Headers {
		if h1.FoldIs(h.Name, "Host") || dropRequestHeaderBytes(h.Name) || h1.ListedInAny(req.Connection, h.Name) {
			continue
		}
		if req.label != nil && h1.FoldIs(h.Name, "Cookie") {
			writeCookieHeader(bw, h.Name, h.Value) // Berth's never reaches the backend
			continue
		}
		bw.Write(h.Name)
		bw.WriteString(": ")
		bw.Write(h.Value)
		bw.WriteString("\r\n")
	}
	if req.TETrailers {
		h1.WriteHeader(bw, "Te", "trailers")
	}
	if clientIP != "" {
		h1.WriteHeader(bw, "X-Forwarded-For", clientIP)
	}
	bw.WriteString("X-Forwarded-Host: ")
	bw.Write(req.Host)
	if https {
		bw.WriteString("\r\nX-Forwarded-Proto: https\r\n")
	} else {
		bw.WriteString("\r\nX-Forwarded-Proto: http\r\n")
	}
	if fw.route.Peer {
		bw.WriteString("\r\n")
		return
	}
	h1.WriteHeader(bw, HeaderBackend, fw.claims.BackendID)
	h1.WriteHeader(bw, HeaderUser, fw.claims.User)
	h1.WriteHeader(bw, HeaderSecret, fw.route.Secret)
	bw.WriteString("\r\n")
}

// checkAdded refuses values the proxy would add that could break the
// request's framing (a user name is whatever the application passed to
// connect); the client's own headers were checked by parse.
func checkAdded(fw *forward) error {
	for _, h := range [...]struct{ k, v string }{
		{HeaderBackend, fw.claims.BackendID}, {HeaderSecret, fw.route.Secret}, {HeaderUser, fw.claims.User},
	} {
		if !h1.ValidHeaderValue(h.v) {
			return fmt.Errorf("invalid value for header %s", h.k)
		}
	}
	return nil
}
