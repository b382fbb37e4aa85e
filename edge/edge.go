// Package edge is Berth's public edge: the listeners browsers on the
// internet reach. It terminates TLS (certificates from files or ACME),
// speaks HTTP/2 over ALPN and HTTP/1.1 (WebSocket upgrades), redirects
// HTTP to HTTPS, learns the client's address from a trusted balancer
// (X-Forwarded-For/-Proto, or the PROXY protocol) and enforces per-client
// limits, then hands each request to the proxy's handler.
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
	"time"
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
	Metrics       *Metrics     // nil: unregistered
	Logger        *slog.Logger // nil: discard
	Now           func() time.Time
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

// Server serves the edge on listeners.
type Server struct {
	cfg     Config
	log     *slog.Logger
	m       *Metrics
	conns   connCounter
	rate    *rateLimiter
	handler http.Handler

	mu   sync.Mutex
	srvs []*http.Server
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
	s := &Server{cfg: cfg, log: cfg.Logger, m: cfg.Metrics}
	if cfg.Limits.RatePerIP > 0 {
		s.rate = newRateLimiter(cfg.Limits.RatePerIP, cfg.Limits.Burst)
	}
	s.handler = http.HandlerFunc(s.serveEdge)
	return s, nil
}

// Serve serves ln with TLS (when configured) until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	srv := s.newHTTPServer(s.handler)
	ln = &listener{Listener: ln, s: s, tls: s.cfg.TLS != nil}
	if s.cfg.TLS != nil {
		srv.TLSConfig = s.cfg.TLS
		ln = tls.NewListener(ln, s.cfg.TLS)
	}
	return srv.Serve(ln)
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
	srvs := s.srvs
	s.mu.Unlock()
	var first error
	for _, srv := range srvs {
		if err := srv.Shutdown(ctx); err != nil && first == nil {
			first = err
		}
	}
	return first
}

type connKey struct{}

// conn returns the edge's connection under r.
func connOf(r *http.Request) *conn {
	c, _ := r.Context().Value(connKey{}).(net.Conn)
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	ec, _ := c.(*conn)
	return ec
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
	if c := connOf(r); c != nil && c.over {
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
			writeError(w, http.StatusTooManyRequests, "too many requests from one address", strconv.Itoa(int(max(time.Second, wait+time.Second-1)/time.Second)))
			return
		}
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
	xff := r.Header.Values("X-Forwarded-For")
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
	code := "too_many_requests"
	switch status {
	case http.StatusRequestURITooLong, http.StatusRequestHeaderFieldsTooLarge:
		code = "too_large"
	}
	fmt.Fprintf(w, "{\"error\":{\"code\":%q,\"message\":%q}}\n", code, msg)
}

// Connection states kept on a conn, from http.Server's ConnState.
const (
	stNew int32 = iota
	stActive
	stIdle
)

// connState follows each connection for the gauge, the slow-client
// count and TLS handshakes.
func (s *Server) connState(nc net.Conn, st http.ConnState) {
	tc, isTLS := nc.(*tls.Conn)
	c, _ := nc.(*conn)
	if isTLS {
		c, _ = tc.NetConn().(*conn)
	}
	if c == nil {
		return
	}
	switch st {
	case http.StateNew:
		s.m.conns.Inc()
	case http.StateActive:
		if isTLS && c.state.Load() == stNew {
			s.m.handshakes.WithLabelValues(alpn(tc)).Inc()
		}
		c.state.Store(stActive)
	case http.StateIdle:
		c.read.Store(0)
		c.state.Store(stIdle)
	case http.StateHijacked, http.StateClosed:
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

func alpn(tc *tls.Conn) string {
	if p := tc.ConnectionState().NegotiatedProtocol; p != "" {
		return p
	}
	return "http/1.1"
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

	state  atomic.Int32
	read   atomic.Int64 // bytes read since the connection went idle
	slow   atomic.Bool  // closed for a request head not sent in time
	closed atomic.Bool
}

func (c *conn) init() {
	c.once.Do(func() {
		c.addr = c.Conn.RemoteAddr()
		peer, _ := netip.ParseAddrPort(c.addr.String())
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
		// A trusted balancer's connections carry many clients: they are
		// limited per request, by X-Forwarded-For, not here.
		if ip := peer.Addr().Unmap(); ip.IsValid() && !c.s.trusted(ip) {
			c.ip = ip
			c.over = !c.s.conns.add(ip, c.s.cfg.Limits.ConnsPerIP)
		}
	})
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
	c.read.Add(int64(n))
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
	if !c.closed.Swap(true) && c.ip.IsValid() {
		c.s.conns.release(c.ip)
	}
	return c.Conn.Close()
}
