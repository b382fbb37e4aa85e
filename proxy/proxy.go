// Package proxy is Berth's public HTTP and WebSocket proxy: it turns
// /<token>/<path…> into a request for <path…> on the backend the token names
// (and, through Hosts, a request for <label>.<suffix> into one for the
// backend the label names; see host.go).
//
// The proxy trusts nothing from the client beyond a valid token: it strips
// every X-Berth-* header the client sent and the client's X-Forwarded-*
// headers before setting its own. It never reads the store (backends are
// found through a Resolver) and never logs a request path, whose first
// segment is a bearer token.
//
// Plain GET and HEAD requests, most of the traffic, go through a lean
// forwarder (forward.go); requests with a body and upgrades go through
// httputil.ReverseProxy.
package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"sync"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
	"github.com/berthhq/berth/token"
)

// ErrGone is what a Resolver returns for a backend that has terminated.
var ErrGone = errors.New("backend is gone")

// Resolver finds where a backend listens.
type Resolver interface {
	// Resolve returns the route to backendID. While the backend is starting
	// it waits, until the backend is ready or ctx is done (then it returns
	// an error wrapping ctx.Err()). It returns ErrGone for a terminated
	// backend and berth.ErrNotFound for one it does not know.
	Resolve(ctx context.Context, backendID string) (Route, error)
}

// Route says how to reach one ready backend.
type Route struct {
	BackendID string
	Addr      string   // host:port
	Secret    string   // sent to the backend as X-Berth-Secret
	Activity  Activity // told about traffic; may be nil
	// Peer: Addr is the proxy of another Berth node, the one that runs the
	// backend. The request goes there as the client sent it, token and
	// all, without Berth's headers: that proxy checks the token again,
	// counts the activity and adds them.
	Peer bool
}

// Activity hears about traffic to a backend, so Berth can tell when it is
// idle. Begin is called when a request or WebSocket starts and End when it
// finishes; a WebSocket is in flight until it closes.
type Activity interface {
	Begin()
	End()
}

// Headers the proxy sets toward the backend.
const (
	HeaderBackend = "X-Berth-Backend"
	HeaderUser    = "X-Berth-User"
	HeaderSecret  = "X-Berth-Secret"
)

// DefaultStartTimeout is how long a request waits for a starting backend
// unless Config.StartTimeout says otherwise.
const DefaultStartTimeout = 30 * time.Second

// Config configures a Proxy.
type Config struct {
	Resolver Resolver      // required
	Signer   *token.Signer // required
	// StartTimeout bounds how long a request waits for a backend that is
	// still starting; 0 means DefaultStartTimeout.
	StartTimeout time.Duration
	Logger       *slog.Logger     // nil: discard
	Now          func() time.Time // nil: time.Now; for tests
}

// Validate reports the first missing or invalid field.
func (c Config) Validate() error {
	switch {
	case c.Resolver == nil:
		return errors.New("proxy: Resolver is required")
	case c.Signer == nil:
		return errors.New("proxy: Signer is required")
	case c.StartTimeout < 0:
		return fmt.Errorf("proxy: StartTimeout %v is negative", c.StartTimeout)
	}
	return nil
}

// Proxy is the public proxy, an http.Handler. Close it on shutdown: an
// http.Server's Shutdown does not close upgraded (WebSocket) connections.
type Proxy struct {
	cfg       Config
	log       *slog.Logger
	transport *http.Transport
	rp        httputil.ReverseProxy // requests with a body, upgrades
	fwd       forwarder             // plain GET and HEAD
	// noForwarder sends every request through rp, for BenchmarkProxy.
	noForwarder bool
	buffers     bufferPool

	mu       sync.Mutex
	closed   bool
	upgraded map[*upgradedConn]struct{}
	tunnels  sync.WaitGroup // tunnel goroutines
}

var _ http.Handler = (*Proxy)(nil)

// New returns a Proxy. It panics if cfg is invalid, which is a programming
// error; see Config.Validate.
func New(cfg Config) *Proxy {
	if err := cfg.Validate(); err != nil {
		panic(err)
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = DefaultStartTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	dialer := newDialer()
	p := &Proxy{
		cfg:       cfg,
		log:       cfg.Logger,
		transport: newTransport(dialer),
		upgraded:  make(map[*upgradedConn]struct{}),
	}
	p.fwd = forwarder{
		dialer:      dialer,
		idleTimeout: idleConnTimeout,
		maxIdle:     maxIdlePerBackend,
		buffers:     &p.buffers,
	}
	p.rp = httputil.ReverseProxy{
		Rewrite:   p.rewrite,
		Transport: p.transport,
		// Zero, not -1: ReverseProxy already flushes streams (no length, or
		// text/event-stream) at once; -1 would add a flush to every response.
		FlushInterval:  0,
		BufferPool:     &p.buffers,
		ErrorHandler:   p.forwardError,
		ModifyResponse: p.modifyResponse,
		// Copy errors (a backend exiting mid-response) go through slog.
		ErrorLog: slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug),
	}
	return p
}

// Close closes every upgraded connection and idle backend connection, and
// refuses new upgrades. Requests in flight are left to http.Server.Shutdown.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	conns := p.upgraded
	p.upgraded = make(map[*upgradedConn]struct{})
	p.mu.Unlock()
	for c := range conns {
		c.ReadWriteCloser.Close()
	}
	p.tunnels.Wait()
	p.transport.CloseIdleConnections()
	p.fwd.close()
	return nil
}

// forward is what ServeHTTP learned about a request, for rewrite.
type forward struct {
	route         Route
	claims        token.Claims
	token         string // as in the request's path; for a Peer route
	path, rawPath string // after the token
}

// outPath is the path of the request that goes out: after the token, or
// with it to a peer.
func (f *forward) outPath() (path, rawPath string) {
	if !f.route.Peer {
		return f.path, f.rawPath
	}
	path = "/" + f.token + f.path
	if f.rawPath != "" {
		rawPath = "/" + f.token + f.rawPath
	}
	return path, rawPath
}

type forwardKey struct{}

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := p.serve(w, r); err != nil {
		p.writeError(w, r, err)
	}
}

func (p *Proxy) serve(w http.ResponseWriter, r *http.Request) error {
	if absoluteForm(r) {
		return errAbsoluteForm
	}
	tok, rawPath, path, ok, err := splitToken(rawTarget(r), r.URL.Path)
	if err != nil {
		return err
	}
	if tok == "" {
		return errMissingToken
	}
	claims, err := p.cfg.Signer.Verify(tok, p.cfg.Now())
	if err != nil {
		return tokenError(err)
	}
	if !ok {
		// Relative URLs in the backend's pages resolve against /<token>/.
		loc := "/" + tok + "/"
		if r.URL.RawQuery != "" {
			loc += "?" + r.URL.RawQuery
		}
		w.Header().Set("Location", loc)
		w.WriteHeader(http.StatusPermanentRedirect)
		return nil
	}
	return p.serveVerified(w, r, tok, claims, path, rawPath)
}

// serveVerified forwards r, whose token tok verified as claims, to the
// backend as path (rawPath: its escaped form, if it differs).
func (p *Proxy) serveVerified(w http.ResponseWriter, r *http.Request, tok string, claims token.Claims, path, rawPath string) error {
	route, err := p.resolve(r.Context(), claims.BackendID, plain(r) && !p.noForwarder)
	if err != nil {
		return err
	}
	var done func()
	handedOff := false
	if a := route.Activity; a != nil {
		a.Begin()
		done = a.End
		defer func() {
			if !handedOff {
				a.End() // an upgrade's tunnel ends the activity when it closes
			}
		}()
	}
	f := &forward{route: route, claims: claims, token: tok, path: path, rawPath: rawPath}
	if plain(r) && !p.noForwarder {
		if err := p.fwd.forward(w, r, f); err != nil {
			if r.Context().Err() != nil {
				return errClientGone
			}
			return &httpError{status: http.StatusBadGateway, code: api.CodeUnavailable, msg: "backend unavailable", err: err, backend: claims.BackendID}
		}
		return nil
	}
	if isUpgrade(r) && !p.noForwarder {
		handedOff, err = p.tunnel(w, r, f, done)
		return err
	}
	p.rp.ServeHTTP(w, r.WithContext(contextWith(r, f)))
	return nil
}

var errMissingToken = &httpError{status: http.StatusUnauthorized, code: api.CodeUnauthorized, msg: "missing token: use the URL Berth returned from connect"}

// tokenError is the answer to a token that fails verification.
func tokenError(err error) error {
	msg := "invalid token"
	if errors.Is(err, token.ErrExpired) {
		msg = "token expired: connect again for a fresh URL"
	}
	return &httpError{status: http.StatusUnauthorized, code: api.CodeUnauthorized, msg: msg, err: err}
}

func contextWith(r *http.Request, f *forward) context.Context {
	return context.WithValue(r.Context(), forwardKey{}, f)
}

// ReadyResolver is implemented by resolvers that can answer without
// blocking for a backend that is already ready; the proxy then skips setting
// up a bounded wait on every request.
type ReadyResolver interface {
	ResolveReady(backendID string) (Route, bool)
}

// resolveReady returns the route to a backend that is ready, if the
// Resolver can tell without waiting.
func (p *Proxy) resolveReady(id string) (Route, bool) {
	if rr, ok := p.cfg.Resolver.(ReadyResolver); ok {
		if route, ok := rr.ResolveReady(id); ok && route.Addr != "" {
			return route, true
		}
	}
	return Route{}, false
}

// resolve finds the route to backend id, waiting while it starts. pooled
// says the request will go out on a pooled backend connection, which is
// what Keep provides.
func (p *Proxy) resolve(ctx context.Context, id string, pooled bool) (Route, error) {
	if route, ok := p.resolveReady(id); ok {
		return route, nil
	}
	if pooled {
		ctx = context.WithValue(ctx, pooledKey{}, true)
	}
	rctx, cancel := context.WithTimeout(ctx, p.cfg.StartTimeout)
	route, err := p.cfg.Resolver.Resolve(rctx, id)
	cancel()
	he := func(status int, msg string, err error) error {
		return &httpError{status: status, code: api.CodeUnavailable, msg: msg, err: err, backend: id}
	}
	switch {
	case err == nil && route.Addr == "":
		return Route{}, he(http.StatusBadGateway, "backend unavailable", errors.New("resolver returned no address"))
	case err == nil:
		return route, nil
	case errors.Is(err, ErrGone), errors.Is(err, berth.ErrNotFound):
		// A validly signed token for a backend nobody knows: it was deleted.
		return Route{}, &httpError{status: http.StatusGone, code: api.CodeGone, msg: "backend has terminated: connect again", err: err, backend: id}
	case ctx.Err() != nil:
		return Route{}, errClientGone
	case errors.Is(rctx.Err(), context.DeadlineExceeded):
		return Route{}, he(http.StatusServiceUnavailable, "backend is still starting", err)
	}
	return Route{}, he(http.StatusBadGateway, "backend unavailable", err)
}

type pooledKey struct{}

// Pooled reports whether the request that asks Resolver.Resolve with ctx
// will go out on a pooled backend connection: a connection given to Keep
// meanwhile would carry it.
func Pooled(ctx context.Context) bool { return ctx.Value(pooledKey{}) != nil }

// rewrite builds the request to the backend. ReverseProxy has already
// removed hop-by-hop and client X-Forwarded-* headers from pr.Out.
func (p *Proxy) rewrite(pr *httputil.ProxyRequest) {
	f := pr.In.Context().Value(forwardKey{}).(*forward)
	out := pr.Out
	out.URL.Scheme = "http"
	out.URL.Host = f.route.Addr
	out.URL.Path, out.URL.RawPath = f.outPath()
	// Pass the query on as sent; the backend alone interprets it.
	out.URL.RawQuery = pr.In.URL.RawQuery
	// out.Host stays the client's Host, so backends that check a WebSocket's
	// Origin against Host (most libraries do by default) accept it.
	pr.SetXForwarded()

	h := out.Header
	for k := range h {
		if isBerthHeader(k) {
			delete(h, k)
		}
	}
	if f.route.Peer {
		return
	}
	h[HeaderBackend] = []string{f.claims.BackendID}
	h[HeaderUser] = []string{f.claims.User}
	h[HeaderSecret] = []string{f.route.Secret}
}

// isBerthHeader reports whether k starts with X-Berth-, ignoring case and
// treating _ as -, since CGI-style frameworks (Rack, Django, PHP) map
// X-Berth_Secret and X-Berth-Secret to the same variable.
func isBerthHeader[T string | []byte](k T) bool {
	const prefix = "x-berth-"
	if len(k) < len(prefix) {
		return false
	}
	for i := 0; i < len(prefix); i++ {
		c := k[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		} else if c == '_' {
			c = '-'
		}
		if c != prefix[i] {
			return false
		}
	}
	return true
}

// modifyResponse tracks upgraded connections so Close can close them.
func (p *Proxy) modifyResponse(res *http.Response) error {
	if res.StatusCode != http.StatusSwitchingProtocols {
		return nil
	}
	rwc, ok := res.Body.(io.ReadWriteCloser)
	if !ok {
		return nil // ReverseProxy reports this itself
	}
	c := &upgradedConn{ReadWriteCloser: rwc, p: p}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return errClosed // ReverseProxy closes the body
	}
	p.upgraded[c] = struct{}{}
	res.Body = c
	return nil
}

// upgradedConn is the backend side of an upgraded connection. Closing it
// ends ReverseProxy's copy loop, which then closes the client side too.
type upgradedConn struct {
	io.ReadWriteCloser
	p *Proxy
}

func (c *upgradedConn) Close() error {
	c.p.mu.Lock()
	delete(c.p.upgraded, c)
	c.p.mu.Unlock()
	return c.ReadWriteCloser.Close()
}

var (
	errClosed     = errors.New("proxy is closed")
	errClientGone = errors.New("client went away")
)

// forwardError handles ReverseProxy's failures to reach the backend.
func (p *Proxy) forwardError(w http.ResponseWriter, r *http.Request, err error) {
	p.writeError(w, r, &httpError{status: http.StatusBadGateway, code: api.CodeUnavailable, msg: "backend unavailable", err: err})
}

// httpError is an error with the status and body the client gets; err, if
// any, is the detail that goes only to the log.
type httpError struct {
	status    int
	code, msg string
	err       error
	backend   string // for the log
}

func (e *httpError) Error() string {
	if e.err == nil {
		return e.msg
	}
	return e.msg + ": " + e.err.Error()
}

func (e *httpError) Unwrap() error { return e.err }

func (p *Proxy) writeError(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil || errors.Is(err, errClientGone) {
		return // nobody to answer
	}
	he := asHTTPError(err)
	backend := he.backend
	if f, ok := r.Context().Value(forwardKey{}).(*forward); ok {
		backend = f.claims.BackendID
	}
	p.logError(r.Context(), he, backend)

	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	if he.status == http.StatusServiceUnavailable {
		h.Set("Retry-After", "1")
	}
	w.WriteHeader(he.status)
	w.Write(he.body())
}

func asHTTPError(err error) *httpError {
	var he *httpError
	if !errors.As(err, &he) {
		he = &httpError{status: http.StatusInternalServerError, code: api.CodeInternal, msg: "internal error", err: err}
	}
	return he
}

// body is the JSON body the client gets.
func (e *httpError) body() []byte {
	b, _ := json.Marshal(api.ErrorBody{Error: api.ErrorDetail{Code: e.code, Message: e.msg}})
	return append(b, '\n')
}

// logError logs a failed request, client errors at debug level. It never
// logs the path: its first segment is a bearer token.
func (p *Proxy) logError(ctx context.Context, he *httpError, backend string) {
	level := slog.LevelWarn
	if he.status < 500 {
		level = slog.LevelDebug
	}
	if backend == "" {
		backend = he.backend
	}
	attrs := []any{"status", he.status, "err", he.err}
	if backend != "" {
		attrs = append(attrs, "backend", backend)
	}
	p.log.Log(ctx, level, "proxy: "+he.msg, attrs...)
}
