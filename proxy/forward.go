package proxy

import (
	"github.com/berthhq/berth/proxy/internal/h1"

	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// forwarder sends the common request — GET or HEAD, no body, no upgrade —
// over its own pool of keep-alive connections, writing the request and
// reading the response in the handler's goroutine. httputil.ReverseProxy
// with http.Transport spends about twice the CPU per request on the clone,
// the transport's reader and writer goroutines and their hand-offs (see
// BenchmarkProxy); requests with a body or an upgrade still go through it,
// because it handles full duplex, 100-continue and protocol switches.
//
// Only idempotent, bodiless requests come here, so a request that fails on
// a reused connection before any response byte arrives is safely sent
// again on a new one.
type forwarder struct {
	dialer      *net.Dialer
	idleTimeout time.Duration
	maxIdle     int // per backend address
	buffers     *bufferPool

	mu     sync.Mutex
	idle   map[string][]*backendConn // by address, least recently used first
	pruner *time.Timer
	closed bool
}

type backendConn struct {
	net.Conn
	raw    net.Conn // Conn with raw system calls, under br and bw
	addr   string
	br     *bufio.Reader // nil while idle in the pool, as bw
	bw     *bufio.Writer
	idleAt time.Time
}

// A backend connection borrows its buffers for a request and gives them
// back when it goes idle in the pool: 20 KiB per connection that a backend
// many clients visited at once may keep for 90 s.
var (
	backendReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, backendReadSize) }}
	backendWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}
)

func newBackendConn(c net.Conn, addr string) *backendConn {
	return &backendConn{Conn: c, raw: newRawConn(c), addr: addr}
}

// borrow gives bc its buffers.
func (bc *backendConn) borrow() {
	if bc.br == nil {
		bc.br = backendReaders.Get().(*bufio.Reader)
		bc.br.Reset(bc.raw)
		bc.bw = backendWriters.Get().(*bufio.Writer)
		bc.bw.Reset(bc.raw)
	}
}

// giveBack returns bc's buffers, which hold nothing.
func (bc *backendConn) giveBack() {
	if bc.br != nil {
		bc.br.Reset(nil)
		backendReaders.Put(bc.br)
		bc.bw.Reset(nil)
		backendWriters.Put(bc.bw)
		bc.br, bc.bw = nil, nil
	}
}

// plain reports whether r can take the forwarder's path.
func plain(r *http.Request) bool {
	return (r.Method == http.MethodGet || r.Method == http.MethodHead) &&
		r.ContentLength == 0 && r.Body == http.NoBody && r.Header["Upgrade"] == nil
}

// staleError is a failure before any byte of the response arrived.
type staleError struct{ err error }

func (e *staleError) Error() string { return "backend closed the connection: " + e.err.Error() }
func (e *staleError) Unwrap() error { return e.err }

var aLongTimeAgo = time.Unix(1, 0)

// forward sends r to the backend and copies the response to w. When it
// returns an error, nothing but informational (1xx) responses has been
// written to w. Once the response has
// begun, a failure aborts the client's connection, as ReverseProxy does, so
// a truncated response never looks complete.
func (f *forwarder) forward(w http.ResponseWriter, r *http.Request, fw *forward) error {
	if err := checkHeaders(r, fw); err != nil {
		return err
	}
	ctx := r.Context()
	for attempt := 0; ; attempt++ {
		bc, reused, err := f.get(ctx, fw.route.Addr)
		if err != nil {
			return err
		}
		// The handler's goroutine is blocked in reads and writes on bc;
		// when the client goes away, the deadline unblocks it.
		stop := context.AfterFunc(ctx, func() { bc.SetDeadline(aLongTimeAgo) })
		res, err := f.roundTrip(w, r, bc, fw)
		if err != nil {
			stop()
			bc.Close()
			var stale *staleError
			if reused && attempt == 0 && errors.As(err, &stale) && ctx.Err() == nil {
				continue
			}
			return err
		}
		err = f.copyResponse(w, res)
		// Bytes beyond the response mean the backend and we disagree about
		// framing: never hand that connection to the next request.
		if !stop() || err != nil || res.Close || bc.br.Buffered() > 0 {
			bc.Close()
		} else {
			f.put(bc)
		}
		if err != nil {
			panic(http.ErrAbortHandler)
		}
		return nil
	}
}

// roundTrip writes the request and reads the response head, passing
// informational (1xx) responses on to w.
func (f *forwarder) roundTrip(w http.ResponseWriter, r *http.Request, bc *backendConn, fw *forward) (*http.Response, error) {
	writeRequest(bc.bw, r, fw)
	if err := bc.bw.Flush(); err != nil {
		return nil, &staleError{err}
	}
	if _, err := bc.br.Peek(1); err != nil {
		return nil, &staleError{err}
	}
	for {
		res, err := http.ReadResponse(bc.br, r)
		switch {
		case err != nil:
			return nil, err
		case res.StatusCode == http.StatusSwitchingProtocols:
			return nil, errors.New("backend switched protocols without an upgrade request")
		case res.StatusCode == http.StatusContinue:
		case res.StatusCode < 200:
			h := w.Header()
			copyResponseHeader(h, res.Header)
			w.WriteHeader(res.StatusCode)
			clear(h)
		default:
			return res, nil
		}
	}
}

func writeRequest(bw *bufio.Writer, r *http.Request, fw *forward) {
	bw.WriteString(r.Method)
	bw.WriteByte(' ')
	var u url.URL
	u.Path, u.RawPath = fw.outPath()
	bw.WriteString(u.EscapedPath())
	if r.URL.RawQuery != "" || r.URL.ForceQuery {
		bw.WriteByte('?')
		bw.WriteString(r.URL.RawQuery)
	}
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	if r.Host != "" {
		bw.WriteString(r.Host)
	} else {
		bw.WriteString(fw.route.Addr)
	}
	bw.WriteString("\r\n")

	conn := r.Header["Connection"]
	for k, vv := range r.Header {
		if dropRequestHeader(k) || listed(conn, k) {
			continue
		}
		for _, v := range vv {
			h1.WriteHeader(bw, k, v)
		}
	}
	if listed(r.Header["Te"], "trailers") {
		h1.WriteHeader(bw, "Te", "trailers")
	}
	if ip, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		h1.WriteHeader(bw, "X-Forwarded-For", ip)
	}
	h1.WriteHeader(bw, "X-Forwarded-Host", r.Host)
	if r.TLS != nil {
		h1.WriteHeader(bw, "X-Forwarded-Proto", "https")
	} else {
		h1.WriteHeader(bw, "X-Forwarded-Proto", "http")
	}
	if !fw.route.Peer {
		h1.WriteHeader(bw, HeaderBackend, fw.claims.BackendID)
		h1.WriteHeader(bw, HeaderUser, fw.claims.User)
		h1.WriteHeader(bw, HeaderSecret, fw.route.Secret)
	}
	bw.WriteString("\r\n")
}

// dropRequestHeader reports whether a client's header must not reach the
// backend: hop-by-hop headers, framing (these requests have no body), and
// the headers the proxy sets itself.
func dropRequestHeader(k string) bool {
	switch k {
	case "Content-Length", "Expect", "Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto":
		return true
	}
	return hopByHop(k) || isBerthHeader(k)
}

// hopByHop reports whether k (canonical) is a hop-by-hop header, as
// httputil.ReverseProxy counts them.
func hopByHop(k string) bool {
	switch k {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
		"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return true
	}
	return false
}

// listed reports whether the comma-separated values contain token,
// ignoring case.
func listed(values []string, token string) bool {
	for _, v := range values {
		for v != "" {
			var item string
			item, v, _ = strings.Cut(v, ",")
			if strings.EqualFold(strings.TrimSpace(item), token) {
				return true
			}
		}
	}
	return false
}

// checkHeaders refuses what writeRequest must not write: a header that
// would break the request's framing. net/http's server already refuses such
// requests from clients; this also covers the values the proxy adds (a user
// name is whatever the application passed to connect) and callers other
// than net/http's server.
func checkHeaders(r *http.Request, fw *forward) error {
	for _, h := range [...]struct{ k, v string }{
		{"Host", r.Host}, {HeaderBackend, fw.claims.BackendID}, {HeaderSecret, fw.route.Secret}, {HeaderUser, fw.claims.User},
	} {
		if !h1.ValidHeaderValue(h.v) {
			return fmt.Errorf("invalid value for header %s", h.k)
		}
	}
	for k, vv := range r.Header {
		if !validHeaderKey(k) {
			return fmt.Errorf("invalid header name %q", k)
		}
		for _, v := range vv {
			if !h1.ValidHeaderValue(v) {
				return fmt.Errorf("invalid value for header %s", k)
			}
		}
	}
	return nil
}

// validHeaderKey reports whether k is a non-empty run of visible ASCII
// without a colon.
func validHeaderKey(k string) bool {
	for i := 0; i < len(k); i++ {
		if c := k[i]; c <= ' ' || c >= 0x7f || c == ':' {
			return false
		}
	}
	return k != ""
}

func copyResponseHeader(dst, src http.Header) {
	conn := src["Connection"]
	for k, vv := range src {
		if !hopByHop(k) && !listed(conn, k) {
			dst[k] = vv
		}
	}
}

// copyResponse writes res to w. Streams (no length, or server-sent events)
// are flushed after every read. It reads res.Body to its end but does not
// close it: on a body from http.ReadResponse, Close drains the rest, which
// for an endless stream never ends; the caller closes the connection.
func (f *forwarder) copyResponse(w http.ResponseWriter, res *http.Response) error {
	h := w.Header()
	copyResponseHeader(h, res.Header)
	announced := len(res.Trailer)
	if announced > 0 {
		keys := make([]string, 0, announced)
		for k := range res.Trailer {
			keys = append(keys, k)
		}
		h["Trailer"] = []string{strings.Join(keys, ", ")}
	}
	w.WriteHeader(res.StatusCode)

	var flusher http.Flusher
	if res.ContentLength == -1 || isEventStream(res.Header.Get("Content-Type")) {
		flusher, _ = w.(http.Flusher)
	}
	if flusher != nil {
		flusher.Flush()
	}
	buf := f.buffers.Get()
	defer f.buffers.Put(buf)
	for {
		n, err := res.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return fmt.Errorf("write response: %w", werr)
			}
			if flusher != nil {
				flusher.Flush()
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read response: %w", err)
		}
	}

	if len(res.Trailer) == announced {
		for k, vv := range res.Trailer {
			h[k] = vv
		}
		return nil
	}
	for k, vv := range res.Trailer {
		h[http.TrailerPrefix+k] = vv
	}
	return nil
}

func isEventStream(ct string) bool {
	const es = "text/event-stream"
	if len(ct) < len(es) || !strings.EqualFold(ct[:len(es)], es) {
		return false
	}
	return len(ct) == len(es) || ct[len(es)] == ';' || ct[len(es)] == ' '
}

func (f *forwarder) get(ctx context.Context, addr string) (bc *backendConn, reused bool, err error) {
	f.mu.Lock()
	if conns := f.idle[addr]; len(conns) > 0 {
		bc = conns[len(conns)-1]
		conns[len(conns)-1] = nil
		f.idle[addr] = conns[:len(conns)-1]
		f.mu.Unlock()
		bc.borrow()
		return bc, true, nil
	}
	f.mu.Unlock()
	c, err := f.dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, false, err
	}
	bc = newBackendConn(c, addr)
	bc.borrow()
	return bc, false, nil
}

// put keeps bc, whose buffers hold nothing, for the next request to its
// address.
func (f *forwarder) put(bc *backendConn) {
	bc.giveBack()
	bc.idleAt = time.Now()
	f.mu.Lock()
	conns := f.idle[bc.addr]
	if f.closed || len(conns) >= f.maxIdle {
		f.mu.Unlock()
		bc.Close()
		return
	}
	if f.idle == nil {
		f.idle = make(map[string][]*backendConn)
	}
	f.idle[bc.addr] = append(conns, bc)
	if f.pruner == nil {
		f.pruner = time.AfterFunc(f.idleTimeout/2, f.prune)
	}
	f.mu.Unlock()
}

// prune closes connections idle for longer than idleTimeout. It runs while
// any connection is idle, and not otherwise.
func (f *forwarder) prune() {
	cutoff := time.Now().Add(-f.idleTimeout)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return
	}
	for addr, conns := range f.idle {
		old := 0
		for old < len(conns) && conns[old].idleAt.Before(cutoff) {
			conns[old].Close()
			old++
		}
		n := copy(conns, conns[old:])
		clear(conns[n:])
		if n == 0 {
			delete(f.idle, addr)
		} else {
			f.idle[addr] = conns[:n]
		}
	}
	if len(f.idle) == 0 {
		f.pruner = nil
		return
	}
	f.pruner.Reset(f.idleTimeout / 2)
}

func (f *forwarder) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	if f.pruner != nil {
		f.pruner.Stop()
	}
	for _, conns := range f.idle {
		for _, bc := range conns {
			bc.Close()
		}
	}
	f.idle = nil
}

// Keep takes over a connection to the backend at addr that carried one
// bodiless GET, whose response br has begun to read. If that whole response
// is already in br and leaves the connection reusable, Keep keeps the
// connection for the next request to addr; otherwise it closes it. It never
// waits for the network.
//
// Berth's readiness probe hands its connection over this way, so the first
// request to a new backend, usually waiting for exactly that probe, goes out
// at once rather than after a dial and the backend's accept.
func (p *Proxy) Keep(addr string, c net.Conn, br *bufio.Reader) {
	if !completeResponse(br) {
		c.Close()
		return
	}
	p.fwd.put(newBackendConn(c, addr))
}

// KeepIdle takes over c, a connection to the backend at addr on which
// every response has been read whole and which the backend keeps open,
// for the next request to addr: the event loops', where a request to a
// ready backend goes, when they run, else the goroutine path's. It never
// waits for the network.
//
// A pooled backend's claim hands its connection over this way, so the
// first request of the key's users goes out without a dial.
func (s *Server) KeepIdle(addr string, c net.Conn) {
	s.mu.Lock()
	loops := s.loops
	s.mu.Unlock()
	if loops.AdoptBackend(addr, c) {
		return
	}
	s.p.fwd.put(newBackendConn(c, addr))
}

// completeResponse reports whether br holds exactly one whole response
// to a GET, after which the backend keeps the connection open.
func completeResponse(br *bufio.Reader) bool {
	buf, _ := br.Peek(br.Buffered())
	var r h1.Relay
	r.Reset(false)
	used, _, err := r.Feed(buf, h1.Discard, math.MaxInt, len(buf)+1, false)
	return err == nil && r.Done() && used == len(buf) && r.Result().BackendReusable
}
