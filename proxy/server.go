package proxy

import (
	"github.com/berthhq/berth/internal/connqueue"
	"github.com/berthhq/berth/proxy/internal/evloop"

	"github.com/berthhq/berth/proxy/internal/h1"

	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berthhq/berth/token"
)

// Server serves a Proxy on listeners. It reads each client connection
// itself and forwards the common request — GET or HEAD, HTTP/1.1, no body,
// no upgrade — without net/http's server: one goroutine per connection
// parses the request head where it lies in the read buffer, writes it to a
// pooled backend connection and relays the response, flushing only before
// it would wait. net/http's server costs about twice the CPU per request
// on this path (a goroutine hand-off per request to watch for the client
// going away, deadlines, the Request and Header maps; see BENCHMARKS.md).
//
// Any other request — a body, an upgrade, HTTP/1.0, a head too large or
// unusual to parse here — hands the connection over, bytes already read
// included, to a net/http server with the Proxy as its handler, which keeps
// the connection from then on. The fast path therefore never has to be
// complete: it only has to recognise what it handles.
//
// ServeConn serves a connection accepted elsewhere the same way: the
// edge's TLS connections that speak HTTP/1.1, whose requests the edge
// admits (ConnHooks) and whose hand-off goes back to the edge's net/http.
// There a request for a backend's host (ServerConfig.HostSuffix) is routed
// by its host and its cookie, as Proxy.Hosts routes it.
//
// On Linux, event loops (loop_linux.go) serve the fast path instead of a
// goroutine per connection: they save the read that finds nothing and the
// goroutine parks the runtime's poller costs per request. A connection
// they do not fully handle goes to a goroutine as above.
type Server struct {
	p           *Proxy
	idleTimeout time.Duration
	fallback    *http.Server
	handoff     *connqueue.Queue
	readers     sync.Pool // *bufio.Reader, clientReadSize
	writers     sync.Pool // *bufio.Writer, clientWriteSize

	closing atomic.Bool
	mu      sync.Mutex
	conns   map[*clientConn]struct{}
	lns     map[net.Listener]struct{}
	sweeper *time.Ticker
	loops   *evloop.Group // nil: a goroutine per connection
	noLoops bool
	hosts   hostRouter     // HostSuffix's: only its label matters here
	wg      sync.WaitGroup // connection goroutines
}

// ServerConfig configures a Server.
type ServerConfig struct {
	// IdleTimeout closes a client connection that has not sent a complete
	// request head for this long, between requests or in the middle of
	// one; 0 means 30 s.
	IdleTimeout time.Duration
	// NoEventLoop serves every connection from a goroutine of its own, as
	// on systems other than Linux, instead of from the event loops.
	NoEventLoop bool
	// HostSuffix is the edge's (Proxy.Hosts): ServeConn routes a request
	// for <label>.<suffix> by its host, as hostRouter does, and hands to
	// its hooks' HandOff what only hostRouter handles (a path to clean).
	// Serve's connections route by path only.
	HostSuffix string
}

const (
	defaultIdleTimeout = 30 * time.Second
	// A request head must fit in the read buffer to take the fast path;
	// larger ones (big cookies) go to net/http, which allows 1 MiB.
	clientReadSize  = 8 << 10
	clientWriteSize = 4 << 10
	// backendReadSize is the read buffer of a backend connection, on
	// either path: a response head must fit in it.
	backendReadSize = 16 << 10
)

// NewServer returns a Server for p.
func (p *Proxy) NewServer(cfg ServerConfig) *Server {
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = defaultIdleTimeout
	}
	s := &Server{
		p:           p,
		idleTimeout: cfg.IdleTimeout,
		handoff:     connqueue.New(handoffAddr{}),
		noLoops:     cfg.NoEventLoop,
		hosts:       *p.Hosts(cfg.HostSuffix).(*hostRouter),
		conns:       make(map[*clientConn]struct{}),
		lns:         make(map[net.Listener]struct{}),
	}
	s.fallback = &http.Server{
		Handler:           p,
		ReadHeaderTimeout: cfg.IdleTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		ErrorLog:          slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
	}
	go s.fallback.Serve(s.handoff)
	return s
}

// Serve accepts connections on ln until Shutdown, and then returns
// http.ErrServerClosed.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		ln.Close()
		return http.ErrServerClosed
	}
	s.lns[ln] = struct{}{}
	if s.sweeper == nil {
		s.sweeper = time.NewTicker(s.sweepTick())
		go s.sweep(s.sweeper.C)
		if !s.noLoops {
			s.startLoops()
		}
	}
	s.mu.Unlock()

	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.closing.Load() {
				return http.ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// Out of descriptors, most likely: wait rather than spin.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.p.log.Warn("proxy: accept", "err", err, "retry_in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		if s.loops.Adopt(c) {
			continue
		}
		if !s.track(c) {
			return http.ErrServerClosed
		}
	}
}

// track serves c from a goroutine of its own, unless the Server is
// shutting down; then it closes c and reports false.
func (s *Server) track(c net.Conn) bool {
	cc := &clientConn{s: s, c: c}
	cc.idleSince.Store(time.Now().UnixNano())
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing.Load() {
		c.Close()
		return false
	}
	s.conns[cc] = struct{}{}
	s.wg.Add(1)
	go cc.serve()
	return true
}

// Shutdown stops accepting, closes idle connections, lets requests in
// flight finish (closing their connections after the response), and waits
// for them until ctx is done. Upgraded connections are the Proxy's: close
// them with Proxy.Close.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing.Store(true)
	for ln := range s.lns {
		ln.Close()
	}
	if s.sweeper != nil {
		s.sweeper.Stop()
	}
	for cc := range s.conns {
		cc.closeIfIdle()
	}
	s.mu.Unlock()
	s.loops.Shutdown() // they close their idle connections

	done := make(chan struct{})
	go func() { s.wg.Wait(); s.loops.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
		s.mu.Lock()
		for cc := range s.conns {
			cc.c.Close()
		}
		s.mu.Unlock()
		s.loops.Abort()
	}
	if ferr := s.fallback.Shutdown(ctx); err == nil {
		err = ferr
	}
	s.handoff.Close()
	return err
}

// startLoops starts the event loops, unless the system refuses them.
// s.mu is held.
func (s *Server) startLoops() {
	loops, err := evloop.Start(evloop.Config{
		Handler:            loopHandler{s},
		Log:                s.p.log,
		IdleTimeout:        s.idleTimeout,
		SweepTick:          s.sweepTick(),
		ClientReadSize:     clientReadSize,
		BackendReadSize:    backendReadSize,
		MaxIdlePerBackend:  maxIdlePerBackend,
		BackendIdleTimeout: idleConnTimeout,
		WatchAfter:         watchAfter,
	})
	if err != nil {
		s.p.log.Warn("proxy: event loop unavailable, serving a goroutine per connection", "err", err)
		return
	}
	s.loops = loops
}

// sweepTick is how often idle connections are looked for.
func (s *Server) sweepTick() time.Duration { return min(time.Second, s.idleTimeout/4) }

// sweep closes connections idle for longer than the idle timeout.
func (s *Server) sweep(tick <-chan time.Time) {
	for now := range tick {
		cutoff := now.Add(-s.idleTimeout).UnixNano()
		s.mu.Lock()
		for cc := range s.conns {
			if cc.idleSince.Load() < cutoff {
				cc.closeIfIdle()
			}
		}
		closing := s.closing.Load()
		s.mu.Unlock()
		if closing {
			return
		}
	}
}

// Connection states.
const (
	connIdle   int32 = iota // waiting for, or reading, a request head
	connActive              // forwarding a request
	connClosed
)

type clientConn struct {
	s         *Server
	c         net.Conn
	rw        net.Conn // c, read and written with raw system calls
	br        *bufio.Reader
	state     atomic.Int32
	idleSince atomic.Int64 // unix nanoseconds
	clientIP  string       // for X-Forwarded-For, computed once
	verified  verified     // the connection's last good token
	host      hostBackend  // the connection's last backend host

	// The watcher of a request in flight (see watch).
	watchTimer *time.Timer
	watchDone  chan struct{}
	armed      bool // the timer runs or has fired, and disarmWatch has not collected it
	gone       atomic.Bool
	bc         atomic.Pointer[backendConn]
	cancelWait atomic.Pointer[context.CancelFunc]

	hooks ConnHooks // ServeConn's; nil for Serve's connections
	https bool      // the request in flight's X-Forwarded-Proto
	reqIP string    // the request in flight's X-Forwarded-For

	// loopable: the last request's backend is one an event loop can
	// reach, so the connection may go back to one (see rejoin).
	loopable bool
	fwd      forward  // the request in flight's
	relay    h1.Relay // its response's
}

// close closes the connection when serve is done with it. A TLS client
// that closed its side between requests (a close_notify, or the end of
// the stream at a record boundary: io.EOF) gets no close_notify back: it
// reads nothing more, and the alert would cost a record's encryption, a
// write into a closed socket and two write deadlines, a measurable part
// of a connection that only made a handshake. nginx does the same
// (OpenSSL's SSL_ERROR_ZERO_RETURN sets no_send_shutdown).
func (cc *clientConn) close(peerClosed bool) {
	if tc, ok := cc.c.(*tls.Conn); ok && peerClosed {
		tc.NetConn().Close()
		return
	}
	cc.c.Close()
}

func (cc *clientConn) closeIfIdle() {
	if cc.state.CompareAndSwap(connIdle, connClosed) {
		cc.c.Close()
	}
}

func (cc *clientConn) serve() {
	s := cc.s
	handedOff, peerClosed := false, false
	defer func() {
		s.mu.Lock()
		delete(s.conns, cc)
		s.mu.Unlock()
		if !handedOff {
			cc.close(peerClosed)
			if cc.br != nil {
				cc.br.Reset(nil)
				s.readers.Put(cc.br)
			}
		}
		s.wg.Done()
	}()
	cc.rw = newRawConn(cc.c)
	if br, ok := s.readers.Get().(*bufio.Reader); ok {
		br.Reset(cc.rw)
		cc.br = br
	} else {
		cc.br = bufio.NewReaderSize(cc.rw, clientReadSize)
	}
	if a, ok := cc.c.RemoteAddr().(*net.TCPAddr); ok {
		cc.clientIP = a.IP.String()
	} else if host, _, err := net.SplitHostPort(cc.c.RemoteAddr().String()); err == nil {
		cc.clientIP = host
	}
	var req request
	for {
		if cc.hooks != nil {
			cc.hooks.Idle()
		}
		n, err := cc.readHead()
		if err != nil {
			peerClosed = err == io.EOF
			return // closed, idle too long, or the client went away
		}
		if !cc.state.CompareAndSwap(connIdle, connActive) {
			return // the sweeper or Shutdown closed it
		}
		head, _ := cc.br.Peek(n)
		if n == 0 || !cc.parse(&req, head) {
			handedOff = cc.handOff()
			return
		}
		cc.reqIP, cc.https = cc.clientIP, false
		var refuse []byte
		if cc.hooks != nil {
			adm := cc.hooks.Admit(Head{&req})
			if adm.HandOff {
				handedOff = cc.handOff()
				return
			}
			refuse = adm.Refuse
			cc.https = adm.HTTPS
			if adm.ClientIP != "" {
				cc.reqIP = adm.ClientIP
			}
		}
		var keep bool
		if refuse != nil {
			keep = cc.refuse(refuse, &req, n)
		} else {
			keep = cc.forward(&req, n)
		}
		if !keep || s.closing.Load() {
			return
		}
		if cc.loopable && cc.br.Buffered() == 0 && cc.rejoin() {
			handedOff = true
			return
		}
		cc.idleSince.Store(time.Now().UnixNano())
		if !cc.state.CompareAndSwap(connActive, connIdle) || s.closing.Load() {
			return
		}
	}
}

// readHead waits for a whole request head in the read buffer and returns
// its length, end of head included, without consuming it. It returns 0
// when the head does not fit in the buffer.
func (cc *clientConn) readHead() (int, error) {
	n, err := h1.ReadHead(cc.br)
	if errors.Is(err, h1.ErrHeadTooLarge) {
		return 0, nil
	}
	return n, err
}

// handOff passes the connection, with what has been read but not
// consumed, to the net/http server.
func (cc *clientConn) handOff() bool {
	br := cc.br
	var prefix []byte
	if n := br.Buffered(); n > 0 {
		b, _ := br.Peek(n)
		prefix = append(make([]byte, 0, n), b...)
	}
	br.Reset(nil)
	cc.s.readers.Put(br)
	cc.br = nil
	hc := &handoffConn{Conn: cc.c, prefix: prefix}
	if cc.hooks != nil {
		cc.hooks.HandOff(hc)
		return true
	}
	if !cc.s.handoff.Put(hc) {
		cc.c.Close()
	}
	return true
}

// parse parses a request head: on the edge with a host suffix, a request
// for a backend's host is routed by its host, any other by its path.
func (cc *clientConn) parse(req *request, head []byte) bool {
	if cc.hooks == nil || cc.s.hosts.dotSuffix == "" {
		return req.parse(head)
	}
	return req.parseRouted(head, cc.s.hosts.dotSuffix)
}

// refuse answers the request whose head is the first n buffered bytes
// with resp, a whole response from ConnHooks.Admit, and reports whether
// the connection stays open.
func (cc *clientConn) refuse(resp []byte, req *request, n int) bool {
	cc.br.Discard(n)
	bw := cc.writer()
	defer cc.releaseWriter(bw)
	bw.Write(resp)
	return bw.Flush() == nil && !req.Close
}

// rejoin gives the connection, which has nothing buffered, to an event
// loop. A loop hands a connection to a goroutine when its request must
// wait for a backend to start; once that request is answered, the loop
// serves the rest of the connection's requests, as it would have had the
// backend been ready (a browser keeps the connection that opened a
// document for the document's later requests).
func (cc *clientConn) rejoin() bool {
	c := cc.c
	if hc, ok := c.(*handoffConn); ok {
		if len(hc.prefix) > 0 {
			return false
		}
		c = hc.Conn
	}
	if !cc.s.loops.Adopt(c) {
		return false
	}
	cc.br.Reset(nil)
	cc.s.readers.Put(cc.br)
	cc.br = nil
	return true
}

// forward answers one parsed request whose head is the first n buffered
// bytes, and reports whether the connection stays open.
func (cc *clientConn) forward(req *request, n int) (keep bool) {
	s := cc.s
	p := s.p
	bw := cc.writer()
	defer cc.releaseWriter(bw)
	keep = !req.Close

	fw := &cc.fwd
	defer func() { cc.fwd = forward{} }() // holds nothing of a backend between requests
	var redirect bool
	var err error
	if req.label != nil {
		redirect, err = p.admitHost(req, &cc.host, &cc.verified, fw)
	} else {
		redirect, err = p.admit(req, &cc.verified, fw)
	}
	switch {
	case err != nil:
		cc.br.Discard(n)
		return cc.writeError(bw, req, err) && keep
	case redirect:
		cc.br.Discard(n)
		return cc.redirect(bw, req) && keep
	}
	claims := fw.claims
	// From here on a watcher notices a client that leaves while the
	// backend takes its time (a long poll, a stream, a start).
	cc.armWatch()
	gone := false
	defer func() {
		if cc.disarmWatch() || gone {
			keep = false
		}
	}()
	route := fw.route
	if route.Addr == "" {
		ctx, cancel := context.WithCancel(context.Background())
		cc.cancelWait.Store(&cancel)
		if cc.gone.Load() {
			cancel()
		}
		route, err = p.resolve(ctx, claims.BackendID, true)
		cancel()
		if err != nil {
			cc.br.Discard(n)
			if errors.Is(err, errClientGone) {
				return false
			}
			return cc.writeError(bw, req, err) && keep
		}
	}
	if a := route.Activity; a != nil {
		a.Begin()
		defer a.End()
	}
	fw.route = route
	// Only a backend the loops will find ready next time: with a Resolver
	// that always makes them wait, every request would bounce the
	// connection from a loop to a goroutine and back.
	cc.loopable = false
	if s.loops != nil && evloop.CanDial(route.Addr) {
		_, cc.loopable = p.resolveReady(claims.BackendID)
	}
	if err := checkAdded(fw); err != nil {
		cc.br.Discard(n)
		return cc.writeError(bw, req, badGateway(fw, err)) && keep
	}

	for attempt := 0; ; attempt++ {
		bc, reused, err := p.fwd.get(context.Background(), route.Addr)
		if err != nil {
			cc.br.Discard(n)
			return cc.writeError(bw, req, badGateway(fw, err)) && keep
		}
		cc.bc.Store(bc)
		if cc.gone.Load() {
			bc.SetDeadline(aLongTimeAgo)
		}
		writeFastRequest(bc.bw, req, fw, cc.reqIP, cc.https)
		err = bc.bw.Flush()
		if err == nil {
			_, err = bc.br.Peek(1)
		}
		if err != nil {
			bc.Close()
			if reused && attempt == 0 && !cc.gone.Load() {
				continue // a stale keep-alive connection: safe to resend
			}
			cc.br.Discard(n)
			return cc.writeError(bw, req, badGateway(fw, err)) && keep
		}
		cc.br.Discard(n) // req's slices point into the head: done with them
		cc.relay.Reset(req.Head)
		cc.relay.ForceClose = !keep || s.closing.Load()
		res, err := h1.RelayResponse(&cc.relay, bw, bc.br)
		// The watcher may have cut the backend connection: stop it before
		// deciding whether the connection can be reused.
		gone = cc.disarmWatch()
		if err != nil || gone {
			bc.Close()
			if err != nil && !res.Started && !gone {
				return cc.writeError(bw, req, badGateway(fw, err)) && keep
			}
			p.log.Debug("proxy: response aborted", "backend", claims.BackendID, "err", err, "client_gone", gone)
			return false
		}
		if res.BackendReusable && bc.br.Buffered() == 0 {
			p.fwd.put(bc)
		} else {
			bc.Close()
		}
		if err := bw.Flush(); err != nil {
			return false
		}
		return keep && !res.ClientClose
	}
}

// watchAfter is how long a request runs before a watcher starts looking
// for its client going away. Most requests finish sooner and never pay for
// the watcher's goroutine and deadlines.
const watchAfter = 10 * time.Millisecond

// armWatch starts the timer that starts the watcher.
func (cc *clientConn) armWatch() {
	cc.armed = true
	if cc.watchTimer == nil {
		cc.watchDone = make(chan struct{}, 1)
		cc.watchTimer = time.AfterFunc(watchAfter, cc.watch)
		return
	}
	cc.watchTimer.Reset(watchAfter)
}

// disarmWatch stops the watcher, waiting for it if it had started, and
// reports whether it saw the client go. It may be called more than once.
func (cc *clientConn) disarmWatch() bool {
	if cc.armed && !cc.watchTimer.Stop() {
		// The watcher has started, and may have finished: make its wait
		// (if any) return, then collect it.
		cc.c.SetReadDeadline(aLongTimeAgo)
		<-cc.watchDone
		cc.c.SetReadDeadline(time.Time{})
	}
	cc.armed = false
	cc.bc.Store(nil)
	cc.cancelWait.Store(nil)
	return cc.gone.Swap(false)
}

// watch waits, without consuming anything, until the client's socket has
// something to say: the client closed it (or it failed), and then it cuts
// the request short, or it sent more (a pipelined request), and then the
// client is still there and watch stops.
func (cc *clientConn) watch() {
	defer func() { cc.watchDone <- struct{}{} }()
	sc, ok := cc.c.(syscall.Conn)
	tc, isTLS := cc.c.(*tls.Conn)
	if isTLS {
		// The socket under the records. A TLS client that leaves may send
		// close_notify before its FIN, so bytes do not mean it stays: the
		// watcher waits on until it sees the FIN or is disarmed.
		sc, ok = tc.NetConn().(syscall.Conn)
	}
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	gone := false
	rc.Read(func(fd uintptr) bool {
		var b [1]byte
		n, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		switch {
		case err == unix.EAGAIN || err == unix.EINTR:
			return false // nothing yet: wait for the socket
		case err != nil || n == 0:
			gone = true
		case isTLS && !peerHungUp(fd):
			return false // a record: the next request, or close_notify
		case isTLS:
			gone = true
		}
		return true
	})
	if !gone {
		return
	}
	cc.gone.Store(true)
	if bc := cc.bc.Load(); bc != nil {
		bc.SetDeadline(aLongTimeAgo)
	}
	if cancel := cc.cancelWait.Load(); cancel != nil {
		(*cancel)()
	}
}

func (cc *clientConn) writer() *bufio.Writer {
	if bw, ok := cc.s.writers.Get().(*bufio.Writer); ok {
		bw.Reset(cc.rw)
		return bw
	}
	return bufio.NewWriterSize(cc.rw, clientWriteSize)
}

func (cc *clientConn) releaseWriter(bw *bufio.Writer) {
	bw.Reset(nil)
	cc.s.writers.Put(bw)
}

// admit checks a parsed request's token and looks up its backend's route
// without waiting. It returns the error to answer with, or redirect for a
// URL that ends with its token, or fills in fw, the forward to make (the
// caller's, so that a request allocates nothing); fw's route has no
// address when the backend is not known to be ready and p.resolve must
// wait for it.
func (p *Proxy) admit(req *request, v *verified, fw *forward) (redirect bool, err error) {
	if len(req.token) == 0 {
		return false, errMissingToken
	}
	claims, err := v.verify(p.cfg.Signer, req.token, p.cfg.Now())
	if err != nil {
		return false, tokenError(err)
	}
	if !req.hasRest {
		return true, nil
	}
	route, _ := p.resolveReady(claims.BackendID)
	*fw = forward{route: route, claims: claims}
	return false, nil
}

// admitHost is admit for a request on a backend's host, as hostRouter
// admits it: a first segment that is a token for the host's backend asks
// for the redirect that sets the cookie; otherwise the token is the
// cookie's, which must be for the host's backend, and req.token is set to
// it. fw's claims are set for a redirect too.
func (p *Proxy) admitHost(req *request, hb *hostBackend, v *verified, fw *forward) (redirect bool, err error) {
	id, err := hb.backend(p.cfg.Signer, req.label)
	if err != nil {
		return false, errUnknownHost
	}
	if len(req.token) > 0 {
		if claims, err := v.verify(p.cfg.Signer, req.token, p.cfg.Now()); err == nil {
			if claims.BackendID != id {
				return false, errOtherBackend
			}
			*fw = forward{claims: claims}
			return true, nil
		}
	}
	claims, err := p.cookieToken(req, id, v)
	if err != nil {
		return false, err
	}
	route, _ := p.resolveReady(claims.BackendID)
	*fw = forward{route: route, claims: claims}
	return false, nil
}

// hostBackend is the backend of the last host label a client connection
// asked for: a browser asks the same host on every request of a
// connection, and BackendOfLabel computes a MAC.
type hostBackend struct {
	label string // lowercase
	id    string
}

func (hb *hostBackend) backend(s *token.Signer, label []byte) (string, error) {
	if hb.label != "" && foldIsASCII(label, hb.label) {
		return hb.id, nil
	}
	lower := strings.ToLower(string(label))
	id, err := s.BackendOfLabel(lower)
	if err != nil {
		return "", err
	}
	hb.label, hb.id = lower, id
	return id, nil
}

// maxCookies is net/http's limit on the cookies of a request: Request.Cookies
// returns none beyond it.
const maxCookies = 3000

// cookieToken is hostRouter.cookieToken for a request the fast path
// parsed: it reads the Cookie headers as Request.Cookies does, and takes
// the first of Berth's cookies that verifies for backend id.
func (p *Proxy) cookieToken(req *request, id string, v *verified) (token.Claims, error) {
	n := 0
	for _, h := range req.Headers {
		if h1.FoldIs(h.Name, "Cookie") {
			n += bytes.Count(h.Value, []byte{';'}) + 1
		}
	}
	if n > maxCookies {
		return token.Claims{}, errMissingToken
	}
	now := p.cfg.Now()
	var first error
	for _, h := range req.Headers {
		if !h1.FoldIs(h.Name, "Cookie") {
			continue
		}
		for line, more := h.Value, true; more; {
			var c []byte
			c, line, more = bytes.Cut(line, []byte{';'})
			name, val, _ := bytes.Cut(trimCookieSpace(c), []byte{'='})
			if string(trimCookieSpace(name)) != CookieName {
				continue
			}
			val, ok := cookieValue(val)
			if !ok {
				continue
			}
			claims, err := v.verify(p.cfg.Signer, val, now)
			if err = forBackend(claims, err, id); err == nil {
				req.token = val
				return claims, nil
			}
			if first == nil {
				first = err
			}
		}
	}
	if first == nil {
		first = errMissingToken
	}
	return token.Claims{}, first
}

// trimCookieSpace trims what net/http trims around a cookie's name and
// value (textproto.TrimString).
func trimCookieSpace(b []byte) []byte {
	return bytes.Trim(b, " \t\r\n")
}

// cookieValue is a cookie's value as net/http reads it: unquoted, and not
// ok when it has a byte a cookie value may not have.
func cookieValue(v []byte) ([]byte, bool) {
	if len(v) > 1 && v[0] == '"' && v[len(v)-1] == '"' {
		v = v[1 : len(v)-1]
	}
	for _, c := range v {
		if c < 0x20 || c >= 0x7f || c == '"' || c == ';' || c == '\\' {
			return nil, false
		}
	}
	return v, true
}

// verified is the last token a client connection presented that verified,
// with its claims. A browser sends the same token on every request of a
// keep-alive connection, and checking its signature again is most of what
// admitting a request costs; until the token expires, the same bytes verify
// the same way.
type verified struct {
	tok    []byte
	claims token.Claims
}

func (v *verified) verify(s *token.Signer, tok []byte, now time.Time) (token.Claims, error) {
	if len(v.tok) > 0 && bytes.Equal(v.tok, tok) && now.Before(v.claims.Expires) {
		return v.claims, nil
	}
	claims, err := s.Verify(string(tok), now)
	if err != nil {
		return claims, err
	}
	v.tok, v.claims = append(v.tok[:0], tok...), claims
	return claims, nil
}

// writeError answers with err as Proxy.writeError does, and reports
// whether the response was written.
func (cc *clientConn) writeError(bw *bufio.Writer, req *request, err error) bool {
	cc.s.p.writeFastError(bw, req, err)
	return bw.Flush() == nil
}

// writeFastError writes the answer to err as Proxy.writeError does.
func (p *Proxy) writeFastError(bw h1.Writer, req *request, err error) {
	he := asHTTPError(err)
	p.logError(context.Background(), he, "")
	body := he.body()
	fmt.Fprintf(bw, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nContent-Length: %d\r\n", he.status, http.StatusText(he.status), len(body))
	if he.status == http.StatusServiceUnavailable {
		bw.WriteString("Retry-After: 1\r\n")
	}
	if req.Close {
		bw.WriteString("Connection: close\r\n")
	}
	bw.WriteString("\r\n")
	if !req.Head {
		bw.Write(body)
	}
}

// redirect answers a URL that ends with its token, as Proxy.serve does,
// or on a backend's host, one that starts with it, as hostRouter does.
func (cc *clientConn) redirect(bw *bufio.Writer, req *request) bool {
	if req.label != nil {
		writeHostRedirect(bw, req, string(req.token), cc.fwd.claims.Expires, cc.s.p.cfg.Now())
	} else {
		writeRedirect(bw, req)
	}
	return bw.Flush() == nil
}

func writeRedirect(bw h1.Writer, req *request) {
	bw.WriteString("HTTP/1.1 308 Permanent Redirect\r\nLocation: /")
	bw.Write(req.token)
	bw.WriteByte('/')
	if len(req.query) > 0 {
		bw.WriteByte('?')
		bw.Write(req.query)
	}
	bw.WriteString("\r\nContent-Length: 0\r\n")
	if req.Close {
		bw.WriteString("Connection: close\r\n")
	}
	bw.WriteString("\r\n")
}

type handoffAddr struct{}

func (handoffAddr) Network() string { return "handoff" }
func (handoffAddr) String() string  { return "handoff" }

// handoffConn is a client connection handed to net/http, which first reads
// the bytes the fast path had read.
type handoffConn struct {
	net.Conn
	prefix []byte
}

func (c *handoffConn) Read(b []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(b, c.prefix)
		c.prefix = c.prefix[n:]
		if len(c.prefix) == 0 {
			c.prefix = nil
		}
		return n, nil
	}
	return c.Conn.Read(b)
}

// NetConn returns the connection under c (the edge finds its own
// through it).
func (c *handoffConn) NetConn() net.Conn { return c.Conn }

// SyscallConn lets a WebSocket tunnel wait on the socket itself once
// nothing is left in prefix.
func (c *handoffConn) SyscallConn() (syscall.RawConn, error) {
	if len(c.prefix) > 0 {
		return nil, errors.New("buffered bytes remain")
	}
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return nil, errors.New("not a socket")
	}
	return sc.SyscallConn()
}
