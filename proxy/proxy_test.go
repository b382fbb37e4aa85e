package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
	"github.com/berthhq/berth/token"
)

var (
	testKey = bytes.Repeat([]byte("k"), token.MinKeyLen)
	now     = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
)

// resolver answers from a map, and makes a backend wait on starting[id]
// (when present) as if it were starting.
type resolver struct {
	mu       sync.Mutex
	routes   map[string]Route
	errs     map[string]error
	starting map[string]chan struct{}
	calls    atomic.Int64
	pooled   []bool // Pooled(ctx) of each call for a starting backend
}

func (r *resolver) Resolve(ctx context.Context, id string) (Route, error) {
	r.calls.Add(1)
	r.mu.Lock()
	ready := r.starting[id]
	if ready != nil {
		r.pooled = append(r.pooled, Pooled(ctx))
	}
	r.mu.Unlock()
	if ready != nil {
		select {
		case <-ready:
		case <-ctx.Done():
			return Route{}, fmt.Errorf("backend %s is starting: %w", id, ctx.Err())
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.errs[id]; err != nil {
		return Route{}, err
	}
	route, ok := r.routes[id]
	if !ok {
		return Route{}, berth.ErrNotFound
	}
	return route, nil
}

// ResolveReady answers for a backend that is neither starting nor
// failing, as the server's resolver does for a ready one.
func (r *resolver) ResolveReady(id string) (Route, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.starting[id] != nil || r.errs[id] != nil {
		return Route{}, false
	}
	route, ok := r.routes[id]
	return route, ok
}

// activity counts Begin and End calls.
type activity struct{ begins, ends atomic.Int64 }

func (a *activity) Begin() { a.begins.Add(1) }
func (a *activity) End()   { a.ends.Add(1) }

// waitFor polls cond, because the proxy calls End after the client has its
// response.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

type fixture struct {
	proxy    *Proxy
	server   *testServer // serves proxy
	signer   *token.Signer
	resolver *resolver
	activity *activity
}

// newFixture proxies backend "bk_1" (for user alice) to backend.
func newFixture(t testing.TB, backend http.Handler) *fixture {
	t.Helper()
	be := httptest.NewServer(backend)
	t.Cleanup(be.Close)
	signer, err := token.NewSigner(testKey)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{signer: signer, activity: &activity{}}
	f.resolver = &resolver{
		routes: map[string]Route{"bk_1": {
			BackendID: "bk_1", Addr: be.Listener.Addr().String(), Secret: "s3cret", Activity: f.activity,
		}},
		errs:     map[string]error{},
		starting: map[string]chan struct{}{},
	}
	f.proxy = New(Config{
		Resolver:     f.resolver,
		Signer:       signer,
		StartTimeout: 5 * time.Second,
		Now:          func() time.Time { return now },
	})
	f.server = serve(t, f.proxy)
	t.Cleanup(func() { f.proxy.Close() })
	return f
}

// viaHandler makes fixtures serve the Proxy as an http.Handler on a
// net/http server, as the Server does after a hand-off, instead of on a
// Server; see TestHandler.
var viaHandler bool

// noEventLoop makes Servers serve a goroutine per connection, as on
// systems other than Linux; see TestGoroutineServer.
var noEventLoop bool

type testServer struct{ URL string }

// serve serves p on a Server (or, with viaHandler, on net/http) until the
// test ends.
func serve(t testing.TB, p *Proxy) *testServer {
	if viaHandler {
		hs := httptest.NewServer(p)
		t.Cleanup(hs.Close)
		return &testServer{URL: hs.URL}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := p.NewServer(ServerConfig{NoEventLoop: noEventLoop})
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-done; err != http.ErrServerClosed {
			t.Errorf("Serve returned %v", err)
		}
	})
	return &testServer{URL: "http://" + ln.Addr().String()}
}

// starting makes backendID a backend that is starting: requests for it
// wait until the returned channel is closed.
func (f *fixture) starting(backendID string) chan struct{} {
	ready := make(chan struct{})
	f.resolver.mu.Lock()
	f.resolver.starting[backendID] = ready
	f.resolver.mu.Unlock()
	return ready
}

// ownServer serves f's proxy on a Server of its own, for tests that
// shut it down themselves: its address, and what Serve returned.
func (f *fixture) ownServer(t testing.TB, cfg ServerConfig) (srv *Server, addr string, served <-chan error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv = f.proxy.NewServer(cfg)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	return srv, ln.Addr().String(), done
}

func (f *fixture) token(backendID string) string {
	return f.signer.Issue(backendID, "alice", now.Add(time.Hour))
}

// get fetches path from the proxy without following redirects.
func (f *fixture) get(t *testing.T, path string, header http.Header) (*http.Response, string) {
	t.Helper()
	return f.do(t, http.MethodGet, path, header, "")
}

// do sends a request to the proxy without following redirects. A body sends
// the request through ReverseProxy rather than the forwarder.
func (f *fixture) do(t *testing.T, method, path string, header http.Header, body string) (*http.Response, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, f.server.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	got, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res, string(got)
}

func echoURI(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.RequestURI) }

// paths are the two ways through the proxy: the forwarder takes plain GETs,
// ReverseProxy takes requests with a body.
var paths = []struct{ method, body string }{{http.MethodGet, ""}, {http.MethodPost, "body"}}

func TestProxy_Path(t *testing.T) {
	var gotBody string
	f := newFixture(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		gotBody = string(b)
		echoURI(w, r)
	}))
	tok := f.token("bk_1")
	tests := []struct{ path, want string }{
		{"/", "/"},
		{"/a/b", "/a/b"},
		{"/a/b/?x=1&y=%20z", "/a/b/?x=1&y=%20z"},
		{"/a%2Fb/c", "/a%2Fb/c"},
		{"/caf%C3%A9", "/caf%C3%A9"},
		{"/?", "/?"},
		{"/?a=1;b=2", "/?a=1;b=2"},
	}
	for _, m := range paths {
		for _, tt := range tests {
			t.Run(m.method+tt.path, func(t *testing.T) {
				res, body := f.do(t, m.method, "/"+tok+tt.path, nil, m.body)
				if res.StatusCode != http.StatusOK || body != tt.want || gotBody != m.body {
					t.Errorf("%s /<token>%s = %d %q, backend read %q; want 200 %q, %q", m.method, tt.path, res.StatusCode, body, gotBody, tt.want, m.body)
				}
			})
		}
	}
}

func TestProxy_Redirect(t *testing.T) {
	f := newFixture(t, http.HandlerFunc(echoURI))
	tok := f.token("bk_1")
	for path, want := range map[string]string{
		"/" + tok:           "/" + tok + "/",
		"/" + tok + "?a=1":  "/" + tok + "/?a=1",
		"/" + tok + "?a=%2": "/" + tok + "/?a=%2",
	} {
		res, _ := f.get(t, path, nil)
		if res.StatusCode != http.StatusPermanentRedirect || res.Header.Get("Location") != want {
			t.Errorf("GET %s = %d Location %q, want 308 %q", path, res.StatusCode, res.Header.Get("Location"), want)
		}
	}
}

func TestProxy_Unauthorized(t *testing.T) {
	f := newFixture(t, http.HandlerFunc(echoURI))
	other, err := token.NewSigner(bytes.Repeat([]byte("o"), token.MinKeyLen))
	if err != nil {
		t.Fatal(err)
	}
	good := f.token("bk_1")
	tampered := []byte(good)
	tampered[len(tampered)/2] ^= 'A' ^ 'B'
	tests := map[string]string{
		"missing":   "/",
		"no path":   "",
		"garbage":   "/hello/world",
		"tampered":  "/" + string(tampered) + "/",
		"expired":   "/" + f.signer.Issue("bk_1", "alice", now) + "/",
		"other key": "/" + other.Issue("bk_1", "alice", now.Add(time.Hour)) + "/",
		"redirect":  "/" + f.signer.Issue("bk_1", "alice", now.Add(-time.Hour)),
	}
	for name, path := range tests {
		t.Run(name, func(t *testing.T) {
			res, body := f.get(t, path, nil)
			if res.StatusCode != http.StatusUnauthorized {
				t.Fatalf("status = %d, want 401; body %s", res.StatusCode, body)
			}
			var eb api.ErrorBody
			if err := json.Unmarshal([]byte(body), &eb); err != nil || eb.Error.Code != api.CodeUnauthorized || eb.Error.Message == "" {
				t.Errorf("body = %s (%v), want an unauthorized error body", body, err)
			}
		})
	}
	if n := f.resolver.calls.Load(); n != 0 {
		t.Errorf("resolver called %d times for unauthorized requests", n)
	}
}

func TestProxy_ResolveErrors(t *testing.T) {
	f := newFixture(t, http.HandlerFunc(echoURI))
	f.proxy.cfg.StartTimeout = 50 * time.Millisecond
	f.resolver.errs["bk_gone"] = fmt.Errorf("lookup: %w", ErrGone)
	f.resolver.errs["bk_broken"] = errors.New("store is down")
	f.resolver.routes["bk_dead"] = Route{BackendID: "bk_dead", Addr: "127.0.0.1:1"}
	f.resolver.starting["bk_slow"] = make(chan struct{})

	tests := []struct {
		id     string
		status int
		code   string
	}{
		{"bk_gone", http.StatusGone, api.CodeGone},
		{"bk_unknown", http.StatusGone, api.CodeGone},
		{"bk_slow", http.StatusServiceUnavailable, api.CodeUnavailable},
		{"bk_broken", http.StatusBadGateway, api.CodeUnavailable},
		{"bk_dead", http.StatusBadGateway, api.CodeUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			res, body := f.get(t, "/"+f.token(tt.id)+"/", nil)
			var eb api.ErrorBody
			json.Unmarshal([]byte(body), &eb)
			if res.StatusCode != tt.status || eb.Error.Code != tt.code {
				t.Errorf("got %d %s, want %d %s", res.StatusCode, body, tt.status, tt.code)
			}
			if strings.Contains(body, "store is down") {
				t.Errorf("body %s leaks an internal error", body)
			}
		})
	}
}

func TestProxy_WaitsForStart(t *testing.T) {
	f := newFixture(t, http.HandlerFunc(echoURI))
	ready := f.starting("bk_1")
	time.AfterFunc(100*time.Millisecond, func() { close(ready) })

	res, body := f.get(t, "/"+f.token("bk_1")+"/x", nil)
	if res.StatusCode != http.StatusOK || body != "/x" {
		t.Errorf("got %d %q, want 200 /x", res.StatusCode, body)
	}
}

func TestProxy_Headers(t *testing.T) {
	var got http.Header
	var host string
	f := newFixture(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, host = r.Header.Clone(), r.Host
		w.Header().Set("Connection", "X-Hop")
		w.Header().Set("X-Hop", "dropped")
		w.Header().Set("X-Reply", "kept")
	}))
	proxyHost := strings.TrimPrefix(f.server.URL, "http://")
	want := map[string][]string{
		"X-Berth-Backend":   {"bk_1"},
		"X-Berth-User":      {"alice"},
		"X-Berth-Secret":    {"s3cret"},
		"X-Berth-Anything":  nil,
		"X-Berth_secret":    nil,
		"X-Forwarded-For":   {"127.0.0.1"},
		"X-Forwarded-Host":  {proxyHost},
		"X-Forwarded-Proto": {"http"},
		"Forwarded":         nil,
		"X-Hop":             nil,
		"X-Other":           {"kept"},
	}
	for _, m := range paths {
		t.Run(m.method, func(t *testing.T) {
			res, _ := f.do(t, m.method, "/"+f.token("bk_1")+"/", http.Header{
				"X-Berth-Secret":    {"forged"},
				"X-Berth-User":      {"mallory"},
				"x-berth-backend":   {"bk_other"},
				"X-Berth-Anything":  {"x"},
				"X-Berth_secret":    {"forged"},
				"X-Forwarded-For":   {"6.6.6.6"},
				"X-Forwarded-Host":  {"evil.example"},
				"X-Forwarded-Proto": {"https"},
				"Forwarded":         {"for=6.6.6.6"},
				"Connection":        {"X-Hop"},
				"X-Hop":             {"dropped"},
				"X-Other":           {"kept"},
			}, m.body)
			if res.StatusCode != http.StatusOK {
				t.Fatalf("status = %d", res.StatusCode)
			}
			for k, v := range want {
				if !slices.Equal(got[k], v) {
					t.Errorf("request %s = %q, want %q", k, got[k], v)
				}
			}
			if host != proxyHost {
				t.Errorf("Host = %q, want the client's %q", host, proxyHost)
			}
			if res.Header.Get("X-Reply") != "kept" || res.Header["X-Hop"] != nil {
				t.Errorf("response headers %v: want X-Reply kept and X-Hop dropped", res.Header)
			}
		})
	}
}

// A user name is any string the application passes to connect; it must not
// be able to inject headers.
func TestProxy_HeaderInjection(t *testing.T) {
	var calls atomic.Int64
	f := newFixture(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { calls.Add(1) }))
	tok := f.signer.Issue("bk_1", "alice\r\nX-Berth-Secret: forged", now.Add(time.Hour))
	for _, m := range paths {
		res, _ := f.do(t, m.method, "/"+tok+"/", nil, m.body)
		if res.StatusCode != http.StatusBadGateway {
			t.Errorf("%s: status = %d, want 502", m.method, res.StatusCode)
		}
	}
	// Handlers called other than by net/http's server may see anything.
	req := httptest.NewRequest(http.MethodGet, "/"+f.token("bk_1")+"/", nil)
	req.Header["X-Evil"] = []string{"a\r\nX-Berth-Secret: forged"}
	rec := httptest.NewRecorder()
	f.proxy.ServeHTTP(rec, req)
	if rec.Code != http.StatusBadGateway {
		t.Errorf("crafted header: status = %d, want 502", rec.Code)
	}
	if calls.Load() != 0 {
		t.Error("the backend received a request with an injected header")
	}
}

func equal(a, b []string) bool {
	return strings.Join(a, "\n") == strings.Join(b, "\n") && len(a) == len(b)
}

func TestIsBerthHeader(t *testing.T) {
	tests := map[string]bool{
		"X-Berth-Secret": true, "x-berth-user": true, "X-BERTH-": true, "X_Berth_Secret": true,
		"X-Berth": false, "X-Berthe-Secret": false, "X-Forwarded-For": false, "": false,
	}
	for k, want := range tests {
		if got := isBerthHeader(k); got != want {
			t.Errorf("isBerthHeader(%q) = %v, want %v", k, got, want)
		}
	}
}

func TestProxy_Streaming(t *testing.T) {
	done := make(chan string, 1)
	f := newFixture(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: one\n\n")
		w.(http.Flusher).Flush()
		// An endless stream: it ends only when the client leaves.
		<-r.Context().Done()
		done <- r.Method
	}))
	for _, m := range paths {
		t.Run(m.method, func(t *testing.T) {
			var body io.Reader
			if m.body != "" {
				body = strings.NewReader(m.body)
			}
			req, _ := http.NewRequest(m.method, f.server.URL+"/"+f.token("bk_1")+"/events", body)
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			// The first event arrives while the backend is still writing.
			line, err := bufio.NewReader(res.Body).ReadString('\n')
			if err != nil || line != "data: one\n" {
				t.Errorf("first line = %q, %v", line, err)
			}
			res.Body.Close()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("the backend's stream went on after the client left")
			}
		})
	}
}

// wsEcho accepts a WebSocket and echoes messages until it closes.
func wsEcho(w http.ResponseWriter, r *http.Request) {
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	defer c.CloseNow()
	for {
		typ, msg, err := c.Read(r.Context())
		if err != nil {
			return
		}
		if err := c.Write(r.Context(), typ, msg); err != nil {
			return
		}
	}
}

func (f *fixture) dialWS(t *testing.T) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(f.server.URL, "http")+"/"+f.token("bk_1")+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c
}

func TestProxy_WebSocket(t *testing.T) {
	f := newFixture(t, http.HandlerFunc(wsEcho))
	c := f.dialWS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, msg := range []string{"hello", "world"} {
		if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		_, got, err := c.Read(ctx)
		if err != nil || string(got) != msg {
			t.Fatalf("echo = %q, %v; want %q", got, err, msg)
		}
	}
	if b, e := f.activity.begins.Load(), f.activity.ends.Load(); b != 1 || e != 0 {
		t.Errorf("open WebSocket: begins=%d ends=%d, want 1 0", b, e)
	}
	c.Close(websocket.StatusNormalClosure, "")
	waitFor(t, "End after the WebSocket closed", func() bool { return f.activity.ends.Load() == 1 })
}

func TestProxy_Activity(t *testing.T) {
	f := newFixture(t, http.HandlerFunc(echoURI))
	tok := f.token("bk_1")
	for range 5 {
		f.get(t, "/"+tok+"/", nil)
	}
	waitFor(t, "5 balanced Begin/End", func() bool {
		return f.activity.begins.Load() == 5 && f.activity.ends.Load() == 5
	})
}

func TestProxy_Close(t *testing.T) {
	f := newFixture(t, http.HandlerFunc(wsEcho))
	c := f.dialWS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Write(ctx, websocket.MessageText, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Read(ctx); err != nil {
		t.Fatal(err)
	}

	f.proxy.Close()
	if _, _, err := c.Read(ctx); err == nil || ctx.Err() != nil {
		t.Errorf("Read after Close = %v (ctx %v), want the connection closed promptly", err, ctx.Err())
	}
	waitFor(t, "End after Close", func() bool { return f.activity.ends.Load() == 1 })

	// New upgrades are refused.
	_, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(f.server.URL, "http")+"/"+f.token("bk_1")+"/ws", nil)
	if err == nil {
		t.Error("WebSocket dial after Close succeeded")
	}
}

func TestConfig_Validate(t *testing.T) {
	signer, _ := token.NewSigner(testKey)
	tests := map[string]Config{
		"no resolver":      {Signer: signer},
		"no signer":        {Resolver: &resolver{}},
		"negative timeout": {Resolver: &resolver{}, Signer: signer, StartTimeout: -1},
	}
	for name, cfg := range tests {
		if err := cfg.Validate(); err == nil {
			t.Errorf("%s: Validate = nil", name)
		}
	}
	if err := (Config{Resolver: &resolver{}, Signer: signer}).Validate(); err != nil {
		t.Errorf("Validate = %v", err)
	}
}

func TestProxy_Head(t *testing.T) {
	f := newFixture(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "5")
		io.WriteString(w, "hello")
	}))
	tok := f.token("bk_1")
	for range 2 { // the second HEAD reuses the connection
		res, body := f.do(t, http.MethodHead, "/"+tok+"/", nil, "")
		if res.StatusCode != http.StatusOK || res.ContentLength != 5 || body != "" {
			t.Errorf("HEAD = %d length %d body %q, want 200 length 5 and no body", res.StatusCode, res.ContentLength, body)
		}
	}
	if _, body := f.get(t, "/"+tok+"/", nil); body != "hello" {
		t.Errorf("GET after HEAD = %q, want hello", body)
	}
}

func TestProxy_Trailers(t *testing.T) {
	f := newFixture(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Sum")
		io.WriteString(w, "data")
		w.(http.Flusher).Flush()
		w.Header().Set("X-Sum", "42")
		w.Header().Set(http.TrailerPrefix+"X-Late", "late")
	}))
	res, err := http.Get(f.server.URL + "/" + f.token("bk_1") + "/")
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(res.Body)
	res.Body.Close()
	if res.Trailer.Get("X-Sum") != "42" || res.Trailer.Get("X-Late") != "late" {
		t.Errorf("trailers = %v, want X-Sum: 42 and X-Late: late", res.Trailer)
	}
}

func TestProxy_EarlyHints(t *testing.T) {
	f := newFixture(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</app.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		io.WriteString(w, "ok")
	}))
	var hints []int
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		hints = append(hints, code)
		return nil
	}}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodGet, f.server.URL+"/"+f.token("bk_1")+"/", nil)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if !slices.Equal(hints, []int{http.StatusEarlyHints}) || res.StatusCode != http.StatusOK || string(body) != "ok" {
		t.Errorf("got 1xx %v then %d %q, want [103] then 200 ok", hints, res.StatusCode, body)
	}
}

// A backend that closes idle keep-alive connections (as Node does after
// five seconds) must not fail the next request.
func TestProxy_StaleConnection(t *testing.T) {
	be := httptest.NewUnstartedServer(http.HandlerFunc(echoURI))
	be.Config.IdleTimeout = 10 * time.Millisecond
	be.Start()
	defer be.Close()
	f := newFixture(t, http.HandlerFunc(echoURI))
	f.resolver.routes["bk_2"] = Route{BackendID: "bk_2", Addr: be.Listener.Addr().String()}
	tok := f.token("bk_2")
	for i := range 3 {
		res, body := f.get(t, "/"+tok+"/x", nil)
		if res.StatusCode != http.StatusOK || body != "/x" {
			t.Fatalf("request %d = %d %q, want 200 /x", i, res.StatusCode, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A client that gives up on a long poll releases the backend's request.
func TestProxy_ClientCancel(t *testing.T) {
	arrived := make(chan struct{}, 1)
	cancelled := make(chan string, 1)
	f := newFixture(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.ReadAll(r.Body) // net/http notices a closed connection only once the body is read
		arrived <- struct{}{}
		<-r.Context().Done()
		cancelled <- r.Method
	}))
	for _, m := range paths {
		t.Run(m.method, func(t *testing.T) {
			// The client gives up once the backend has the request: on a
			// loaded machine a fixed timeout could end it before that.
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go func() {
				select {
				case <-arrived:
					cancel()
				case <-ctx.Done():
				}
			}()
			var body io.Reader
			if m.body != "" {
				body = strings.NewReader(m.body)
			}
			req, _ := http.NewRequestWithContext(ctx, m.method, f.server.URL+"/"+f.token("bk_1")+"/poll", body)
			if _, err := http.DefaultClient.Do(req); err == nil {
				t.Fatal("request succeeded; want it cancelled")
			}
			select {
			case got := <-cancelled:
				if got != m.method {
					t.Errorf("cancelled %s, want %s", got, m.method)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the backend's request was not cancelled")
			}
		})
	}
	waitFor(t, "balanced Begin/End", func() bool { return f.activity.begins.Load() == 2 && f.activity.ends.Load() == 2 })
}

// TestHandler runs the tests of the proxy's behaviour with the Proxy
// served as an http.Handler on net/http's server, the path a connection
// takes after the Server hands it off.
func TestHandler(t *testing.T) {
	viaHandler = true
	defer func() { viaHandler = false }()
	for name, test := range behaviourTests() {
		t.Run(name, test)
	}
}

// behaviourTests are the tests of the proxy's behaviour, which every way
// of serving it must pass.
func behaviourTests() map[string]func(*testing.T) {
	return map[string]func(*testing.T){
		"Path": TestProxy_Path, "Redirect": TestProxy_Redirect, "Unauthorized": TestProxy_Unauthorized,
		"ResolveErrors": TestProxy_ResolveErrors, "WaitsForStart": TestProxy_WaitsForStart,
		"Headers": TestProxy_Headers, "HeaderInjection": TestProxy_HeaderInjection,
		"Streaming": TestProxy_Streaming, "WebSocket": TestProxy_WebSocket, "Activity": TestProxy_Activity,
		"Close": TestProxy_Close, "Head": TestProxy_Head, "Trailers": TestProxy_Trailers,
		"EarlyHints": TestProxy_EarlyHints, "StaleConnection": TestProxy_StaleConnection,
		"ClientCancel": TestProxy_ClientCancel, "Keep": TestProxy_Keep, "PooledHint": TestProxy_PooledHint,
		"PathNormalization": TestProxy_PathNormalization, "AbsoluteForm": TestProxy_AbsoluteForm,
		"PeerRoute": TestProxy_PeerRoute, "PeerRouteWebSocket": TestProxy_PeerRouteWebSocket,
	}
}
