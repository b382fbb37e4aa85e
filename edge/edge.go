// Package edge is Berth's public edge: the listeners browsers on the
// internet reach. It terminates TLS (certificates from files or ACME),
// speaks HTTP/2 over ALPN and HTTP/1.1 (WebSocket upgrades), redirects
// HTTP to HTTPS, learns the client's address from a trusted balancer
// (X-Forwarded-For/-Proto, or the PROXY protocol) and enforces per-client
// limits, then hands each request to the proxy's handler — or, for a TLS
// connection that speaks HTTP/1.1, the connection to the proxy's own
// HTTP/1.1 server (Config.H1), admitting each request it parses.
//
// The edge never routes, checks tokens or talks to backends: that is the
// proxy's. It never trusts a forwarded header from a peer outside
// TrustedProxies, and it never logs a request path (its first segment may
// be a bearer token).
package edge

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/berthhq/berth/internal/connqueue"
	"github.com/berthhq/berth/proxy"
)

// Limits are the per-client limits at the edge. Zero values mean the
// defaults noted; negative ones turn a limit off.
type Limits struct {
	// ConnsPerIP caps one client address's open connections; a
	// connection over it is answered 429 and closed. 0: no limit.
	ConnsPerIP int
	// RatePerIP is the requests per second one client address may make,
	// in bursts of up to Burst; more are answered 429 with Retry-After.
	// 0: no limit.
	RatePerIP float64
	Burst     int
	// MaxHeaderBytes caps a request's header (431); 0 means 64 KiB.
	MaxHeaderBytes int
	// MaxURLBytes caps a request target (414); 0 means 8 KiB.
	MaxURLBytes int
	// HeaderTimeout is how long a client has to finish its TLS handshake
	// and each request head; a slow one is disconnected (408 first on
	// plain HTTP). 0 means 10 s.
	HeaderTimeout time.Duration
	// IdleTimeout closes a keep-alive connection idle for this long; 0
	// means 2 min.
	IdleTimeout time.Duration
}

func (l *Limits) setDefaults() {
	if l.MaxHeaderBytes == 0 {
		l.MaxHeaderBytes = 64 << 10
	}
	if l.MaxURLBytes == 0 {
		l.MaxURLBytes = 8 << 10
	}
	if l.HeaderTimeout == 0 {
		l.HeaderTimeout = 10 * time.Second
	}
	if l.IdleTimeout == 0 {
		l.IdleTimeout = 2 * time.Minute
	}
}

// Config configures a Server.
type Config struct {
	// Handler serves every request the edge admits (the proxy's).
	Handler http.Handler
	// TLS, if set, makes Serve terminate TLS with it (see TLSConfig), and
	// ServeHTTP redirect to HTTPS. Nil: Serve speaks plain HTTP, for an
	// L7 balancer that terminates TLS itself.
	TLS *tls.Config
	// HTTPSPort is the port redirects name; 0 or 443 names none.
	HTTPSPort int
	// ACMEHTTP, if set, answers ACME HTTP-01 challenges on the HTTP
	// listener; it reports whether it handled the request.
	ACMEHTTP func(http.ResponseWriter, *http.Request) bool
	// TrustedProxies are the balancers whose X-Forwarded-For and
	// X-Forwarded-Proto are believed, and whose connections' PROXY
	// headers are; empty: none.
	TrustedProxies []netip.Prefix
	// ProxyProtocol: every connection starts with a PROXY protocol (v1 or
	// v2) header naming the client. With TrustedProxies set, only a
	// connection from one of them may carry one.
	ProxyProtocol bool
	Limits        Limits
	// H1, if set, serves the TLS connections that negotiate HTTP/1.1
	// (or no ALPN) itself: the proxy's own HTTP/1.1 path
	// (proxy.Server.ServeConn), which hands any connection it does not
	// fully serve back to the edge's net/http server. Nil: net/http
	// serves every connection. HTTP/2 is always net/http's.
	H1      H1Server
	Metrics *Metrics     // nil: unregistered
	Logger  *slog.Logger // nil: discard
	Now     func() time.Time
}

// Validate reports the first invalid field.
func (c *Config) Validate() error {
	switch {
	case c.Handler == nil:
		return errors.New("edge: Handler is required")
	case c.Limits.RatePerIP < 0, c.Limits.ConnsPerIP < 0, c.Limits.Burst < 0:
		return errors.New("edge: limits must not be negative")
	case c.HTTPSPort < 0 || c.HTTPSPort > 65535:
		return fmt.Errorf("edge: HTTPSPort %d", c.HTTPSPort)
	}
	return nil
}

// H1Server serves HTTP/1.1 connections on a path of its own
// (*proxy.Server).
type H1Server interface {
	ServeConn(c net.Conn, hooks proxy.ConnHooks)
	Shutdown(ctx context.Context) error
}

var _ H1Server = (*proxy.Server)(nil)

// Server serves the edge on listeners.
type Server struct {
	cfg     Config
	log     *slog.Logger
	m       *Metrics
	conns   connCounter
	rate    *rateLimiter
	handler http.Handler

	mu       sync.Mutex
	srvs     []*http.Server
	lns      []net.Listener // Serve's own accept loops' (with H1)
	closing  bool
	tlsConns sync.WaitGroup     // serveTLS's handshakers
	fast     map[*conn]struct{} // the H1 server's, for sweep
	stop     chan struct{}      // stops sweep and the idle handshakers
	epoch    time.Time

	idleHandshakers atomic.Int32 // serveTLS's, waiting for a connection
}

// New returns a Server for cfg.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.Limits.setDefaults()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Server{cfg: cfg, log: cfg.Logger, m: cfg.Metrics, fast: make(map[*conn]struct{}), stop: make(chan struct{}), epoch: time.Now()}
	if cfg.Limits.RatePerIP > 0 {
		s.rate = newRateLimiter(cfg.Limits.RatePerIP, cfg.Limits.Burst)
	}
	s.handler = http.HandlerFunc(s.serveEdge)
	return s, nil
}

// Serve serves ln with TLS (when configured) until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	srv := s.newHTTPServer(s.handler)
	if s.cfg.TLS == nil {
		return srv.Serve(&listener{Listener: ln, s: s})
	}
	if s.cfg.H1 == nil {
		srv.TLSConfig = s.cfg.TLS
		return srv.Serve(tls.NewListener(&listener{Listener: ln, s: s, tls: true}, s.cfg.TLS))
	}
	return s.serveTLS(ln, srv)
}

// serveTLS accepts ln's connections and finishes each one's handshake on
// the goroutine that accepted it, which then serves the connection while
// it lasts (a handshaker); HTTP/1.1 goes to the H1 server, anything else
// (HTTP/2, a connection over its address's limit, a protocol the H1
// server does not speak) to srv, as does any connection H1 hands back.
func (s *Server) serveTLS(ln net.Listener, srv *http.Server) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		ln.Close()
		return http.ErrServerClosed
	}
	s.lns = append(s.lns, ln)
	if len(s.lns) == 1 {
		s.tlsConns.Add(1)
		go func() { defer s.tlsConns.Done(); s.sweep(s.stop) }()
	}
	s.mu.Unlock()
	// net/http's HTTP/2 set-up may adjust its TLS config: not the one the
	// handshakes here read.
	srv.TLSConfig = s.cfg.TLS.Clone()
	q := connqueue.New(ln.Addr())
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Serve(q) }()
	a := &acceptor{s: s, ln: ln, q: q, failed: make(chan error, 1)}
	if !a.spawn() {
		q.Close()
		<-srvDone
		return http.ErrServerClosed
	}
	err := <-a.failed
	q.Close()
	<-srvDone
	return err
}

// acceptor is serveTLS's: its handshakers take turns in ln.Accept (which
// lets one in at a time), and the one whose Accept returns a connection
// handshakes and serves it itself, after making sure another is
// accepting. A connection used to go from one accept loop to a waiting
// handshaker, a goroutine hand-off on every handshake's path.
type acceptor struct {
	s      *Server
	ln     net.Listener
	q      *connqueue.Queue
	failed chan error // the error that ended accepting (buffered: the first)
}

// spawn starts a handshaker, unless the server is closing.
func (a *acceptor) spawn() bool {
	s := a.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing { // Shutdown waits for tlsConns: no Add after it
		return false
	}
	s.tlsConns.Add(1)
	go a.handshaker()
	return true
}

// maxIdleHandshakers bounds the goroutines that wait in Accept after
// serving a connection: each keeps a stack grown for a handshake.
const maxIdleHandshakers = 64

// handshaker accepts a connection and serves it, then accepts the next,
// for as long as the listener accepts and no more than
// maxIdleHandshakers others wait in Accept. A new goroutine per
// connection grew its stack through crypto/tls's handshake every time:
// newproc and copystack were 8 % of the edge's CPU per handshake in a
// profile (BENCHMARKS.md).
func (a *acceptor) handshaker() {
	s := a.s
	defer s.tlsConns.Done()
	var backoff time.Duration
	for {
		s.idleHandshakers.Add(1)
		c, err := a.accept()
		idle := s.idleHandshakers.Add(-1)
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				a.fail(http.ErrServerClosed)
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("edge: accept", "err", err, "retry_in", backoff)
				time.Sleep(backoff)
				continue
			}
			a.fail(err)
			return
		}
		backoff = 0
		if idle == 0 && !a.spawn() { // someone must be accepting meanwhile
			c.Close()
			return
		}
		s.m.conns.Inc()
		ec := &conn{Conn: proxy.RawConn(c), sock: c, s: s, tls: true, own: true, q: a.q}
		ec.serveTLS()
		if s.idleHandshakers.Load() >= maxIdleHandshakers {
			return
		}
	}
}

// acceptStackPad is how much of its stack a handshaker keeps in use while
// it waits in Accept. The GC halves the stack of a parked goroutine that
// uses less than a quarter of it, and the next handshake (crypto/tls's
// ECDSA signature) grew it back: that cycle was 5 % of the edge's CPU in
// a profile of the handshake row (BENCHMARKS.md). Waiting with this much
// in use, a handshaker keeps a stack of up to four times as much.
const acceptStackPad = 8 << 10

// padSink keeps accept's pad from being optimized away.
var padSink atomic.Uint32

// accept is ln.Accept, called with acceptStackPad bytes of stack in use.
//
//go:noinline
func (a *acceptor) accept() (net.Conn, error) {
	var pad [acceptStackPad]byte
	c, err := a.ln.Accept()
	if err != nil {
		padSink.Store(uint32(pad[len(pad)-1]))
	}
	return c, err
}

// fail ends serveTLS with err, the first handshaker's that stops accepting.
func (a *acceptor) fail(err error) {
	select {
	case a.failed <- err:
	default:
	}
}

// serveTLS finishes the connection's handshake and gives it to the H1
// server or to net/http.
func (c *conn) serveTLS() {
	s := c.s
	c.init()
	if c.err != nil {
		c.Close()
		return
	}
	tc := tls.Server(c, s.cfg.TLS)
	c.Conn.SetDeadline(time.Now().Add(s.cfg.Limits.HeaderTimeout))
	if err := tc.Handshake(); err != nil {
		tc.Close()
		return
	}
	c.Conn.SetDeadline(time.Time{})
	c.tc = tc
	c.handshook.Store(true)
	proto := tc.ConnectionState().NegotiatedProtocol
	s.m.handshake(proto)
	if proto != "" && proto != "http/1.1" || c.over {
		// net/http answers 429 to a connection over its limit.
		if !c.q.Put(tc) {
			tc.Close()
		}
		return
	}
	c.fast.Store(true)
	s.mu.Lock()
	s.fast[c] = struct{}{}
	s.mu.Unlock()
	s.cfg.H1.ServeConn(tc, c)
	s.mu.Lock()
	delete(s.fast, c)
	s.mu.Unlock()
}

// Idle is for proxy.ConnHooks: the connection waits for a request head,
// as long as IdleTimeout between requests, then HeaderTimeout from its
// first byte (conn.Read); the first head must come within HeaderTimeout
// of the handshake, as on net/http's path. The sweeper enforces these
// deadlines: three read deadlines set per request (a runtime timer each)
// measured at several percent of the CPU a request costs.
func (c *conn) Idle() {
	l := &c.s.cfg.Limits
	if c.state.Load() == stNew {
		c.setDeadline(l.HeaderTimeout)
		return
	}
	c.read.Store(0)
	c.state.Store(stIdle)
	c.setDeadline(l.IdleTimeout)
}

// setDeadline gives the connection d from now to finish what it reads.
func (c *conn) setDeadline(d time.Duration) { c.deadline.Store(c.s.mono() + int64(d)) }

// mono is a monotonic clock in nanoseconds.
func (s *Server) mono() int64 { return int64(time.Since(s.epoch)) }

// sweep closes the H1 server's connections past their deadline, until
// stop is closed.
func (s *Server) sweep(stop <-chan struct{}) {
	l := &s.cfg.Limits
	t := time.NewTicker(max(10*time.Millisecond, min(time.Second, l.HeaderTimeout/4, l.IdleTimeout/4)))
	defer t.Stop()
	var late []*conn
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		now := s.mono()
		s.mu.Lock()
		for c := range s.fast {
			if d := c.deadline.Load(); d > 0 && d < now && c.deadline.CompareAndSwap(d, -1) {
				late = append(late, c)
			}
		}
		s.mu.Unlock()
		for i, c := range late {
			if c.state.Load() == stNew || c.read.Load() > 0 {
				c.slow.Store(true) // not an idle keep-alive connection
			}
			c.Close() // its reader fails, and the H1 server lets go
			late[i] = nil
		}
		late = late[:0]
	}
}

// Admit is for proxy.ConnHooks: the limits serveEdge applies, for a
// request on the H1 server's path.
func (c *conn) Admit(h proxy.Head) proxy.Admission {
	s := c.s
	l := &s.cfg.Limits
	c.state.Store(stActive)
	c.deadline.Store(0)
	if h.TargetLen() > l.MaxURLBytes || h.HeaderBytes() > l.MaxHeaderBytes {
		return proxy.Admission{HandOff: true} // net/http's path answers 414 or 431, and counts
	}
	client, ip := c.peer, c.peerIP
	if c.balancer {
		if client = s.forwardedClient(h.Values("X-Forwarded-For"), c.peer); client != c.peer {
			ip = client.Addr().String()
		}
	}
	if s.rate != nil {
		if ok, wait := s.rate.allow(client.Addr(), s.cfg.Now()); !ok {
			s.m.rateLimit.Inc()
			return proxy.Admission{Refuse: errorResponse(http.StatusTooManyRequests, "too many requests from one address", retryAfter(wait), h.IsHead())}
		}
	}
	s.m.h1.Inc()
	return proxy.Admission{ClientIP: ip, HTTPS: true}
}

// HandOff is for proxy.ConnHooks: net/http serves the connection from
// now on.
func (c *conn) HandOff(hc net.Conn) {
	c.fast.Store(false)
	c.deadline.Store(0)
	st := c.tc.ConnectionState()
	c.tlsState = &st
	if !c.q.Put(hc) {
		hc.Close()
	}
}

// ServeHTTP serves ln in plain HTTP: with TLS configured it answers ACME
// HTTP-01 challenges and redirects everything else to HTTPS, unless a
// trusted balancer says the client's request came over HTTPS; without
// TLS it serves the edge, as Serve does.
func (s *Server) ServeHTTP(ln net.Listener) error {
	srv := s.newHTTPServer(http.HandlerFunc(s.serveHTTPPort))
	return srv.Serve(&listener{Listener: ln, s: s})
}

func (s *Server) newHTTPServer(h http.Handler) *http.Server {
	l := s.cfg.Limits
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: l.HeaderTimeout,
		IdleTimeout:       l.IdleTimeout,
		// net/http's own cap answers 431 uncounted; the handler's, below
		// it, counts. The slack lets the handler see what it refuses.
		MaxHeaderBytes: l.MaxHeaderBytes + l.MaxURLBytes + 4<<10,
		ConnState:      s.connState,
		ConnContext:    func(ctx context.Context, c net.Conn) context.Context { return context.WithValue(ctx, connKey{}, c) },
		ErrorLog:       slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams: 250,
			// A client that never reads its window does not hold a stream
			// forever: the same bound as a request head.
			SendPingTimeout: l.IdleTimeout,
			PingTimeout:     l.HeaderTimeout,
		},
	}
	s.mu.Lock()
	s.srvs = append(s.srvs, srv)
	s.mu.Unlock()
	return srv
}

// Shutdown stops every listener and waits for requests in flight until ctx
// is done. Upgraded connections are the proxy's to close.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if !s.closing {
		close(s.stop)
	}
	s.closing = true
	srvs := s.srvs
	for _, ln := range s.lns {
		ln.Close()
	}
	s.mu.Unlock()
	var first error
	for _, srv := range srvs {
		if err := srv.Shutdown(ctx); err != nil && first == nil {
			first = err
		}
	}
	if s.cfg.H1 != nil {
		if err := s.cfg.H1.Shutdown(ctx); err != nil && first == nil {
			first = err
		}
		// Handshakes still in flight end within HeaderTimeout; the H1
		// server or net/http, both closed by now, close what they give.
		done := make(chan struct{})
		go func() { s.tlsConns.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			if first == nil {
				first = ctx.Err()
			}
		}
	}
	return first
}

type connKey struct{}

// connOf returns the edge's connection under r.
func connOf(r *http.Request) *conn {
	c, _ := r.Context().Value(connKey{}).(net.Conn)
	return edgeConn(c)
}

// edgeConn returns the edge's connection under c: c itself, or under its
// TLS, or under the proxy's hand-off.
func edgeConn(c net.Conn) *conn {
	for c != nil {
		switch x := c.(type) {
		case *conn:
			return x
		case interface{ NetConn() net.Conn }:
			c = x.NetConn()
		default:
			return nil
		}
	}
	return nil
}

// serveHTTPPort serves the plain-HTTP listener.
func (s *Server) serveHTTPPort(w http.ResponseWriter, r *http.Request) {
	if s.cfg.ACMEHTTP != nil && strings.HasPrefix(r.URL.Path, "/.well-known/acme-challenge/") && s.cfg.ACMEHTTP(w, r) {
		return
	}
	if s.cfg.TLS == nil || s.forwardedHTTPS(r) {
		s.serveEdge(w, r)
		return
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if host == "" || strings.ContainsAny(host, "/\\@ ") {
		http.Error(w, "missing host", http.StatusBadRequest)
		return
	}
	if s.cfg.HTTPSPort != 0 && s.cfg.HTTPSPort != 443 {
		host = net.JoinHostPort(host, strconv.Itoa(s.cfg.HTTPSPort))
	}
	w.Header().Set("Connection", "close")
	http.Redirect(w, r, "https://"+host+r.URL.RequestURI(), http.StatusPermanentRedirect)
}

// forwardedHTTPS reports whether a trusted balancer says r came over
// HTTPS. The peer is the one the PROXY header named, if any: through an
// L4 balancer the headers are the client's own.
func (s *Server) forwardedHTTPS(r *http.Request) bool {
	peer, err := netip.ParseAddrPort(r.RemoteAddr)
	return err == nil && s.trusted(peer.Addr()) && forwardedProto(r) == "https"
}

func forwardedProto(r *http.Request) string {
	return strings.ToLower(lastValue(r.Header.Values("X-Forwarded-Proto")))
}

func (s *Server) trusted(ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, p := range s.cfg.TrustedProxies {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// serveEdge admits a request and passes it on.
func (s *Server) serveEdge(w http.ResponseWriter, r *http.Request) {
	l := &s.cfg.Limits
	c := connOf(r)
	if c != nil && c.over {
		s.m.connLimit.Inc()
		w.Header().Set("Connection", "close")
		writeError(w, http.StatusTooManyRequests, "too many connections from one address", "1")
		return
	}
	if len(r.RequestURI) > l.MaxURLBytes {
		s.m.urlSize.Inc()
		writeError(w, http.StatusRequestURITooLong, "request target too long", "")
		return
	}
	if headerBytes(r) > l.MaxHeaderBytes {
		s.m.headerSize.Inc()
		writeError(w, http.StatusRequestHeaderFieldsTooLarge, "request header too large", "")
		return
	}
	peer, _ := netip.ParseAddrPort(r.RemoteAddr)
	fromBalancer := s.trusted(peer.Addr())
	client := s.clientAddr(r, fromBalancer)
	if s.rate != nil {
		if ok, wait := s.rate.allow(client.Addr(), s.cfg.Now()); !ok {
			s.m.rateLimit.Inc()
			writeError(w, http.StatusTooManyRequests, "too many requests from one address", retryAfter(wait))
			return
		}
	}
	if r.TLS == nil && c != nil && c.tlsState != nil {
		// A TLS connection the H1 server handed back: net/http sees it
		// under the hand-off, not as a *tls.Conn.
		r.TLS = c.tlsState
	}
	if r.TLS == nil && fromBalancer && forwardedProto(r) == "https" {
		// The proxy tells the backend X-Forwarded-Proto: https, and the
		// host router's Secure cookie is right.
		r.TLS = &tls.ConnectionState{HandshakeComplete: true}
	}
	if client.IsValid() {
		r.RemoteAddr = client.String()
	}
	if r.ProtoMajor == 2 {
		s.m.h2.Inc()
	} else {
		s.m.h1.Inc()
	}
	s.cfg.Handler.ServeHTTP(w, r)
}

// clientAddr is the client's address: the peer's (as the PROXY header
// named it), or, from a trusted balancer, the last address in
// X-Forwarded-For that is not itself a trusted balancer.
func (s *Server) clientAddr(r *http.Request, fromBalancer bool) netip.AddrPort {
	peer, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.AddrPort{}
	}
	peer = netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port())
	if !fromBalancer {
		return peer
	}
	return s.forwardedClient(r.Header.Values("X-Forwarded-For"), peer)
}

// forwardedClient is the client a trusted balancer names in xff (the
// X-Forwarded-For values), else the balancer, peer.
func (s *Server) forwardedClient(xff []string, peer netip.AddrPort) netip.AddrPort {
	var hops []string
	for _, v := range xff {
		hops = append(hops, strings.Split(v, ",")...)
	}
	for i := len(hops) - 1; i >= 0; i-- {
		ip, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			break // garbage: trust nothing before it
		}
		ip = ip.Unmap()
		if !s.trusted(ip) || i == 0 {
			return netip.AddrPortFrom(ip, 0)
		}
	}
	return peer
}

func lastValue(vv []string) string {
	if len(vv) == 0 {
		return ""
	}
	v := vv[len(vv)-1]
	if i := strings.LastIndexByte(v, ','); i >= 0 {
		v = v[i+1:]
	}
	return strings.TrimSpace(v)
}

// headerBytes is the size of r's header as sent, near enough.
func headerBytes(r *http.Request) int {
	n := 0
	for k, vv := range r.Header {
		for _, v := range vv {
			n += len(k) + len(v) + 4
		}
	}
	return n
}

func writeError(w http.ResponseWriter, status int, msg, retryAfter string) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	if retryAfter != "" {
		h.Set("Retry-After", retryAfter)
	}
	w.WriteHeader(status)
	w.Write(errorBody(status, msg))
}

// errorResponse is writeError's answer as a whole HTTP/1.1 response.
func errorResponse(status int, msg, retryAfter string, head bool) []byte {
	body := errorBody(status, msg)
	b := fmt.Appendf(nil, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n", status, http.StatusText(status))
	if retryAfter != "" {
		b = append(b, "Retry-After: "+retryAfter+"\r\n"...)
	}
	b = fmt.Appendf(b, "Content-Length: %d\r\n\r\n", len(body))
	if !head {
		b = append(b, body...)
	}
	return b
}

func errorBody(status int, msg string) []byte {
	code := "too_many_requests"
	switch status {
	case http.StatusRequestURITooLong, http.StatusRequestHeaderFieldsTooLarge:
		code = "too_large"
	}
	return fmt.Appendf(nil, "{\"error\":{\"code\":%q,\"message\":%q}}\n", code, msg)
}

// retryAfter is Retry-After for a wait: whole seconds, at least one.
func retryAfter(wait time.Duration) string {
	return strconv.Itoa(int(max(time.Second, wait+time.Second-1) / time.Second))
}

// Connection states kept on a conn, from http.Server's ConnState.
const (
	stNew int32 = iota
	stActive
	stIdle
)

// connState follows each connection for the gauge, the slow-client
// count and TLS handshakes.
// Serve's own connections (with H1) are counted by serveTLS and Close.
func (s *Server) connState(nc net.Conn, st http.ConnState) {
	tc, isTLS := nc.(*tls.Conn)
	c := edgeConn(nc)
	if c == nil {
		return
	}
	switch st {
	case http.StateNew:
		if !c.own {
			s.m.conns.Inc()
		}
	case http.StateActive:
		if isTLS && !c.own && c.state.Load() == stNew {
			st := tc.ConnectionState()
			s.m.handshake(st.NegotiatedProtocol)
		}
		c.state.Store(stActive)
	case http.StateIdle:
		c.read.Store(0)
		c.state.Store(stIdle)
	case http.StateHijacked, http.StateClosed:
		if c.own {
			return
		}
		s.m.conns.Dec()
		if c.slow.Load() {
			phase := "header"
			if isTLS && !tc.ConnectionState().HandshakeComplete {
				phase = "handshake"
			}
			s.m.timeouts.WithLabelValues(phase).Inc()
		}
	}
}

// listener wraps each accepted connection in a conn.
type listener struct {
	net.Listener
	s   *Server
	tls bool
}

func (l *listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &conn{Conn: c, s: l.s, tls: l.tls}, nil
}

// conn is a client connection. Its PROXY header, if the edge expects one,
// is read on first use, in the connection's own goroutine, so a slow
// client never holds up Accept; then it is counted against its address's
// connection limit.
type conn struct {
	net.Conn
	s    *Server
	tls  bool
	once sync.Once
	br   *bufio.Reader // what follows the PROXY header; nil when drained
	err  error         // a bad PROXY header: every Read fails with it
	addr net.Addr      // the client's, as the PROXY header names it
	ip   netip.Addr    // counted against the limit; invalid: not counted
	over bool          // over the per-address connection limit

	// Serve's own TLS connections (with H1): counted here, not by
	// connState; q is where net/http takes them.
	own       bool
	q         *connqueue.Queue
	sock      net.Conn             // the socket under Conn (a raw one), for SyscallConn
	peer      netip.AddrPort       // the client's address (unmapped), as addr
	peerIP    string               // peer's address, for X-Forwarded-For
	balancer  bool                 // peer is a trusted balancer
	tc        *tls.Conn            // the TLS connection over this one, once handshaken
	tlsState  *tls.ConnectionState // tc's, for net/http once handed off
	handshook atomic.Bool
	fast      atomic.Bool // the H1 server reads the connection
	// deadline (Server.mono) for what the H1 server waits to read; 0:
	// none, -1: passed, being closed.
	deadline atomic.Int64

	state  atomic.Int32
	read   atomic.Int64 // bytes read since the connection went idle
	slow   atomic.Bool  // closed for a request head not sent in time
	closed atomic.Bool
}

func (c *conn) init() {
	c.once.Do(func() {
		c.addr = c.Conn.RemoteAddr()
		var peer netip.AddrPort
		if ta, ok := c.addr.(*net.TCPAddr); ok {
			ap := ta.AddrPort()
			peer = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		} else {
			peer, _ = netip.ParseAddrPort(c.addr.String())
		}
		if c.s.cfg.ProxyProtocol {
			if len(c.s.cfg.TrustedProxies) > 0 && !c.s.trusted(peer.Addr()) {
				c.err = fmt.Errorf("proxy protocol: peer %s is not a trusted proxy", peer.Addr())
				c.s.m.proxyErrors.Inc()
				return
			}
			c.Conn.SetReadDeadline(time.Now().Add(c.s.cfg.Limits.HeaderTimeout))
			c.br = bufio.NewReaderSize(c.Conn, 256)
			ap, err := readProxyHeader(c.br)
			c.Conn.SetReadDeadline(time.Time{})
			if err != nil {
				c.err = err
				c.s.m.proxyErrors.Inc()
				c.s.log.Debug("edge: PROXY header", "peer", peer, "err", err)
				return
			}
			if ap.IsValid() {
				c.addr = tcpAddr(ap)
				peer = ap
			}
		}
		c.peer = netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port())
		if c.peer.Addr().IsValid() {
			c.peerIP = c.peer.Addr().String()
		}
		c.balancer = c.s.trusted(c.peer.Addr())
		// A trusted balancer's connections carry many clients: they are
		// limited per request, by X-Forwarded-For, not here.
		// Without a limit nothing is counted.
		if ip := peer.Addr().Unmap(); ip.IsValid() && !c.balancer && c.s.cfg.Limits.ConnsPerIP > 0 {
			c.ip = ip
			c.over = !c.s.conns.add(ip, c.s.cfg.Limits.ConnsPerIP)
		}
	})
}

// SyscallConn lets the proxy watch the socket under the TLS records for
// the client going away (proxy.Server.ServeConn); it only peeks, so what
// the PROXY header's reader may hold does not matter. A plain-HTTP
// connection offers none: a WebSocket tunnel must read it through Read.
func (c *conn) SyscallConn() (syscall.RawConn, error) {
	sc, ok := c.sock.(syscall.Conn)
	if !ok || !c.own {
		return nil, errors.New("edge: no socket to watch")
	}
	return sc.SyscallConn()
}

func (c *conn) RemoteAddr() net.Addr {
	c.init()
	return c.addr
}

func (c *conn) Read(b []byte) (int, error) {
	c.init()
	if c.err != nil {
		return 0, c.err
	}
	var n int
	var err error
	if c.br != nil && c.br.Buffered() > 0 {
		n, err = c.br.Read(b)
	} else {
		c.br = nil
		n, err = c.Conn.Read(b)
	}
	if total := c.read.Add(int64(n)); n > 0 && total == int64(n) && c.fast.Load() && c.state.Load() == stIdle {
		// The first bytes of a request head on the H1 server's path: the
		// rest must follow within HeaderTimeout.
		c.setDeadline(c.s.cfg.Limits.HeaderTimeout)
	}
	if err != nil && c.state.Load() != stActive {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() && (c.state.Load() == stNew || c.read.Load() > 0) {
			c.slowClient()
		}
	}
	return n, err
}

// slowClient marks a connection whose client did not send its request
// head (or finish its handshake) in time; on plain HTTP, with part of a
// head read, it says so before the server closes it.
func (c *conn) slowClient() {
	if c.slow.Swap(true) {
		return
	}
	if !c.tls && c.read.Load() > 0 {
		c.Conn.SetWriteDeadline(time.Now().Add(time.Second))
		c.Conn.Write([]byte("HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"))
	}
}

func (c *conn) Close() error {
	if !c.closed.Swap(true) {
		if c.ip.IsValid() {
			c.s.conns.release(c.ip)
		}
		if c.own {
			c.s.m.conns.Dec()
			if c.slow.Load() {
				phase := "header"
				if !c.handshook.Load() {
					phase = "handshake"
				}
				c.s.m.timeouts.WithLabelValues(phase).Inc()
			}
		}
	}
	return c.Conn.Close()
}
