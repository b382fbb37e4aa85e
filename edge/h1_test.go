package edge

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/berthhq/berth/proxy"
	"github.com/berthhq/berth/token"
)

// The edge's HTTP/1.1 path over TLS: the proxy's own (proxy.Server's
// ServeConn), with every edge feature kept, and net/http for what it
// hands back.

const (
	h1Backend = "bk_aaaaaaaaaaaaaaaa"
	h1Gone    = "bk_gggggggggggggggg"
	h1Suffix  = "edge.test"
)

// mapResolver routes h1Backend to addr; h1Gone is gone.
type mapResolver struct{ addr string }

func (r mapResolver) Resolve(_ context.Context, id string) (proxy.Route, error) {
	return r.route(id)
}

func (r mapResolver) ResolveReady(id string) (proxy.Route, bool) {
	route, err := r.route(id)
	return route, err == nil
}

func (r mapResolver) route(id string) (proxy.Route, error) {
	switch id {
	case h1Backend:
		return proxy.Route{BackendID: id, Addr: r.addr, Secret: "s"}, nil
	case h1Gone:
		return proxy.Route{}, proxy.ErrGone
	}
	return proxy.Route{}, proxy.ErrGone
}

// countingH1 is the proxy's Server, counting what its connections' hooks
// are asked: Admit means the request took the fast path.
type countingH1 struct {
	*proxy.Server
	admits, handOffs atomic.Int32
}

func (c *countingH1) ServeConn(nc net.Conn, hooks proxy.ConnHooks) {
	c.Server.ServeConn(nc, countingHooks{hooks, c})
}

type countingHooks struct {
	proxy.ConnHooks
	c *countingH1
}

func (h countingHooks) Admit(head proxy.Head) proxy.Admission {
	a := h.ConnHooks.Admit(head)
	if !a.HandOff {
		h.c.admits.Add(1)
	}
	return a
}

func (h countingHooks) HandOff(c net.Conn) {
	h.c.handOffs.Add(1)
	h.ConnHooks.HandOff(c)
}

type h1Fixture struct {
	*edgeFixture
	h1     *countingH1
	signer *token.Signer
	tok    string        // h1Backend's
	hung   chan struct{} // a request to /hang ended: its client went away
}

// startH1Edge serves a real proxy (routing by path, and by host under
// edge.test) through an edge with cfg and TLS, in front of a backend that
// echoes what it got; WebSockets echo a message.
func startH1Edge(t testing.TB, cfg Config) *h1Fixture {
	t.Helper()
	return startH1EdgeOn(t, cfg, func() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") })
}

// startH1EdgeOn is startH1Edge with the TLS listener from listen.
func startH1EdgeOn(t testing.TB, cfg Config, listen func() (net.Listener, error)) *h1Fixture {
	t.Helper()
	hung := make(chan struct{}, 1)
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hang" {
			select {
			case <-r.Context().Done():
				hung <- struct{}{}
			case <-time.After(10 * time.Second):
			}
			return
		}
		if r.Header.Get("Upgrade") != "" {
			c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
			if err != nil {
				return
			}
			defer c.CloseNow()
			typ, b, err := c.Read(r.Context())
			if err == nil {
				c.Write(r.Context(), typ, append([]byte("ws "+r.Header.Get("X-Forwarded-Proto")+" "), b...))
			}
			return
		}
		body, _ := io.ReadAll(r.Body)
		io.WriteString(w, r.Method+" "+r.URL.RequestURI()+" xff="+r.Header.Get("X-Forwarded-For")+
			" xfp="+r.Header.Get("X-Forwarded-Proto")+" cookie="+r.Header.Get("Cookie")+" body="+string(body))
	}))
	t.Cleanup(be.Close)
	signer, err := token.NewSigner(bytes.Repeat([]byte("k"), token.MinKeyLen))
	if err != nil {
		t.Fatal(err)
	}
	px := proxy.New(proxy.Config{Resolver: mapResolver{be.Listener.Addr().String()}, Signer: signer})
	t.Cleanup(func() { px.Close() })
	h1 := &countingH1{Server: px.NewServer(proxy.ServerConfig{NoEventLoop: true, HostSuffix: h1Suffix})}
	cfg.Handler = px.Hosts(h1Suffix)
	cfg.H1 = h1
	f := &h1Fixture{edgeFixture: startEdgeOn(t, cfg, true, listen), h1: h1, signer: signer, hung: hung}
	f.tok = signer.Issue(h1Backend, "u", time.Now().Add(time.Hour))
	return f
}

// dialTLS opens an HTTP/1.1 TLS connection to the edge, after prefix.
func (f *h1Fixture) dialTLS(t *testing.T, prefix []byte) (*tls.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	if len(prefix) > 0 {
		c.Write(prefix)
	}
	cfg := f.ca.clientTLS("edge.test")
	cfg.NextProtos = []string{"http/1.1"}
	tc := tls.Client(c, cfg)
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.Handshake(); err != nil {
		c.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { tc.Close() })
	return tc, bufio.NewReader(tc)
}

// roundTrip writes raw (a request) on c and reads the response.
func roundTrip(t *testing.T, c net.Conn, br *bufio.Reader, raw string) (*http.Response, string) {
	t.Helper()
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	method, _, _ := strings.Cut(raw, " ")
	res, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("%q: %v", raw, err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	return res, string(b)
}

func TestServer_H1(t *testing.T) {
	f := startH1Edge(t, Config{})

	t.Run("GET and HEAD take the fast path", func(t *testing.T) {
		a0, h0 := f.h1.admits.Load(), f.h1.handOffs.Load()
		c, br := f.dialTLS(t, nil)
		res, body := roundTrip(t, c, br, "GET /"+f.tok+"/a?b=1 HTTP/1.1\r\nHost: edge.test\r\n\r\n")
		if res.StatusCode != 200 || body != "GET /a?b=1 xff=127.0.0.1 xfp=https cookie= body=" {
			t.Errorf("GET: %d %q", res.StatusCode, body)
		}
		res, body = roundTrip(t, c, br, "HEAD /"+f.tok+"/a HTTP/1.1\r\nHost: edge.test\r\n\r\n")
		if res.StatusCode != 200 || body != "" {
			t.Errorf("HEAD: %d %q", res.StatusCode, body)
		}
		if a, h := f.h1.admits.Load()-a0, f.h1.handOffs.Load()-h0; a != 2 || h != 0 {
			t.Errorf("fast path admitted %d, handed off %d; want 2, 0", a, h)
		}
	})
	t.Run("no ALPN takes the fast path too", func(t *testing.T) {
		a0 := f.h1.admits.Load()
		tc, err := tls.Dial("tcp", f.addr, f.ca.clientTLS("edge.test")) // NextProtos unset
		if err != nil {
			t.Fatal(err)
		}
		defer tc.Close()
		if p := tc.ConnectionState().NegotiatedProtocol; p != "" {
			t.Fatalf("negotiated %q", p)
		}
		res, body := roundTrip(t, tc, bufio.NewReader(tc), "GET /"+f.tok+"/n HTTP/1.1\r\nHost: edge.test\r\n\r\n")
		if res.StatusCode != 200 || !strings.Contains(body, "xfp=https") || f.h1.admits.Load()-a0 != 1 {
			t.Errorf("%d %q, admitted %d", res.StatusCode, body, f.h1.admits.Load()-a0)
		}
	})
	t.Run("401 and 410", func(t *testing.T) {
		c, br := f.dialTLS(t, nil)
		if res, _ := roundTrip(t, c, br, "GET /nope/a HTTP/1.1\r\nHost: edge.test\r\n\r\n"); res.StatusCode != http.StatusUnauthorized {
			t.Errorf("bad token: %d, want 401", res.StatusCode)
		}
		gone := f.signer.Issue(h1Gone, "u", time.Now().Add(time.Hour))
		if res, _ := roundTrip(t, c, br, "GET /"+gone+"/a HTTP/1.1\r\nHost: edge.test\r\n\r\n"); res.StatusCode != http.StatusGone {
			t.Errorf("gone backend: %d, want 410", res.StatusCode)
		}
	})
	t.Run("a body hands the connection to net/http", func(t *testing.T) {
		h0 := f.h1.handOffs.Load()
		c, br := f.dialTLS(t, nil)
		roundTrip(t, c, br, "GET /"+f.tok+"/first HTTP/1.1\r\nHost: edge.test\r\n\r\n")
		res, body := roundTrip(t, c, br, "POST /"+f.tok+"/p HTTP/1.1\r\nHost: edge.test\r\nContent-Length: 5\r\n\r\nhello")
		// X-Forwarded-Proto stays https: the edge knows the handed-off
		// connection is TLS.
		if res.StatusCode != 200 || body != "POST /p xff=127.0.0.1 xfp=https cookie= body=hello" {
			t.Errorf("POST: %d %q", res.StatusCode, body)
		}
		if res, body := roundTrip(t, c, br, "GET /"+f.tok+"/after HTTP/1.1\r\nHost: edge.test\r\n\r\n"); res.StatusCode != 200 || !strings.Contains(body, "xfp=https") {
			t.Errorf("GET after the hand-off: %d %q", res.StatusCode, body)
		}
		if h := f.h1.handOffs.Load() - h0; h != 1 {
			t.Errorf("handed off %d times, want 1", h)
		}
	})
	t.Run("WebSocket", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		ws, _, err := websocket.Dial(ctx, "wss://edge.test/"+f.tok+"/ws", &websocket.DialOptions{HTTPClient: f.client(false)})
		if err != nil {
			t.Fatal(err)
		}
		defer ws.CloseNow()
		ws.Write(ctx, websocket.MessageText, []byte("hi"))
		_, b, err := ws.Read(ctx)
		if err != nil || string(b) != "ws https hi" {
			t.Errorf("WebSocket echo: %q, %v", b, err)
		}
	})
	t.Run("a client that goes away cuts its request short", func(t *testing.T) {
		c, _ := f.dialTLS(t, nil)
		io.WriteString(c, "GET /"+f.tok+"/hang HTTP/1.1\r\nHost: edge.test\r\n\r\n")
		time.Sleep(100 * time.Millisecond) // past the proxy's watchAfter
		c.Close()
		select {
		case <-f.hung:
		case <-time.After(5 * time.Second):
			t.Error("the backend's request outlived its client")
		}
	})
	t.Run("HTTP/2 stays on net/http", func(t *testing.T) {
		a0 := f.h1.admits.Load()
		res, body := get(t, f.client(true), "https://edge.test/"+f.tok+"/h2")
		if res.StatusCode != 200 || res.ProtoMajor != 2 || !strings.Contains(body, "xfp=https") {
			t.Errorf("h2: %d %s %q", res.StatusCode, res.Proto, body)
		}
		if a := f.h1.admits.Load() - a0; a != 0 {
			t.Errorf("the fast path admitted %d HTTP/2 requests", a)
		}
	})
	t.Run("host routing", func(t *testing.T) {
		label, _ := f.signer.HostLabel(h1Backend)
		host := label + "." + h1Suffix
		a0, h0 := f.h1.admits.Load(), f.h1.handOffs.Load()
		c, br := f.dialTLS(t, nil)
		res, _ := roundTrip(t, c, br, "GET /"+f.tok+"/x HTTP/1.1\r\nHost: "+host+"\r\n\r\n")
		ck := res.Header.Get("Set-Cookie")
		if res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != "/x" || !strings.Contains(ck, "Secure") {
			t.Fatalf("first request: %d to %q, cookie %q", res.StatusCode, res.Header.Get("Location"), ck)
		}
		cookie, _, _ := strings.Cut(ck, ";")
		res, body := roundTrip(t, c, br, "GET /x HTTP/1.1\r\nHost: "+host+"\r\nCookie: "+cookie+"; app=1\r\n\r\n")
		if res.StatusCode != 200 || body != "GET /x xff=127.0.0.1 xfp=https cookie=app=1 body=" {
			t.Errorf("with the cookie: %d %q", res.StatusCode, body)
		}
		// A session's requests take the fast path, the first included.
		c, br = f.dialTLS(t, nil)
		for _, path := range []string{"/", "/_next/app.js?v=1"} {
			res, body = roundTrip(t, c, br, "GET "+path+" HTTP/1.1\r\nHost: "+host+"\r\nCookie: app=1; "+cookie+"\r\n\r\n")
			if res.StatusCode != 200 || body != "GET "+path+" xff=127.0.0.1 xfp=https cookie=app=1 body=" {
				t.Errorf("%s with the cookie, fast path: %d %q", path, res.StatusCode, body)
			}
		}
		if a, h := f.h1.admits.Load()-a0, f.h1.handOffs.Load()-h0; a != 4 || h != 0 {
			t.Errorf("the fast path admitted %d requests and handed off %d connections, want 4 and 0", a, h)
		}
	})
	t.Run("metrics", func(t *testing.T) {
		if n := testutil.ToFloat64(f.metrics.handshakes.WithLabelValues("http/1.1")); n < 4 {
			t.Errorf("http/1.1 handshakes counted: %v", n)
		}
		if n := testutil.ToFloat64(f.metrics.h1); n < 6 {
			t.Errorf("HTTP/1.1 requests counted: %v", n)
		}
	})
}

func TestServer_H1Limits(t *testing.T) {
	now := time.Unix(1000, 0)
	var mu sync.Mutex
	f := startH1Edge(t, Config{
		Limits: Limits{ConnsPerIP: 2, RatePerIP: 1, Burst: 2, MaxURLBytes: 300, MaxHeaderBytes: 200,
			HeaderTimeout: 300 * time.Millisecond, IdleTimeout: 400 * time.Millisecond},
		Now: func() time.Time { mu.Lock(); defer mu.Unlock(); return now },
	})
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }

	t.Run("rate", func(t *testing.T) {
		c, br := f.dialTLS(t, nil)
		for i := 0; i < 2; i++ {
			if res, body := roundTrip(t, c, br, "GET /"+f.tok+"/ HTTP/1.1\r\nHost: edge.test\r\n\r\n"); res.StatusCode != 200 {
				t.Fatalf("request %d within the burst: %d %s", i, res.StatusCode, body)
			}
		}
		res, body := roundTrip(t, c, br, "GET /"+f.tok+"/ HTTP/1.1\r\nHost: edge.test\r\n\r\n")
		if res.StatusCode != http.StatusTooManyRequests || res.Header.Get("Retry-After") != "1" || !strings.Contains(body, "too_many_requests") {
			t.Errorf("over the rate: %d, Retry-After %q, %q", res.StatusCode, res.Header.Get("Retry-After"), body)
		}
		if res, body := roundTrip(t, c, br, "HEAD /"+f.tok+"/ HTTP/1.1\r\nHost: edge.test\r\n\r\n"); res.StatusCode != http.StatusTooManyRequests || body != "" {
			t.Errorf("HEAD over the rate: %d %q", res.StatusCode, body)
		}
		advance(2 * time.Second)
		if res, _ := roundTrip(t, c, br, "GET /"+f.tok+"/ HTTP/1.1\r\nHost: edge.test\r\n\r\n"); res.StatusCode != 200 {
			t.Errorf("after refill, same connection: %d", res.StatusCode)
		}
		if n := testutil.ToFloat64(f.metrics.rateLimit); n != 2 {
			t.Errorf("rate_limit counted %v, want 2", n)
		}
	})
	t.Run("sizes", func(t *testing.T) {
		advance(time.Hour)
		// The rate test's connection counts against ConnsPerIP until the
		// edge has seen it close.
		waitFor(t, "earlier connections to close", func() bool { return testutil.ToFloat64(f.metrics.conns) == 0 })
		c, br := f.dialTLS(t, nil)
		if res, _ := roundTrip(t, c, br, "GET /"+f.tok+"/"+strings.Repeat("a", 300)+" HTTP/1.1\r\nHost: edge.test\r\n\r\n"); res.StatusCode != http.StatusRequestURITooLong {
			t.Errorf("long URL: %d, want 414", res.StatusCode)
		}
		c, br = f.dialTLS(t, nil)
		if res, _ := roundTrip(t, c, br, "GET /"+f.tok+"/ HTTP/1.1\r\nHost: edge.test\r\nX-Big: "+strings.Repeat("b", 250)+"\r\n\r\n"); res.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("big header: %d, want 431", res.StatusCode)
		}
		if testutil.ToFloat64(f.metrics.urlSize) != 1 || testutil.ToFloat64(f.metrics.headerSize) != 1 {
			t.Errorf("size refusals not counted")
		}
	})
	t.Run("connections", func(t *testing.T) {
		advance(time.Hour)
		waitFor(t, "earlier connections to close", func() bool { return testutil.ToFloat64(f.metrics.conns) == 0 })
		c1, _ := f.dialTLS(t, nil)
		f.dialTLS(t, nil)
		c, br := f.dialTLS(t, nil)
		if res, _ := roundTrip(t, c, br, "GET /"+f.tok+"/ HTTP/1.1\r\nHost: edge.test\r\n\r\n"); res.StatusCode != http.StatusTooManyRequests {
			t.Errorf("third connection: %d, want 429", res.StatusCode)
		}
		c1.Close()
		// Only the second is left once the edge has closed the third and
		// seen the first go.
		waitFor(t, "the closed connections to be released", func() bool { return testutil.ToFloat64(f.metrics.conns) == 1 })
		c, br = f.dialTLS(t, nil)
		if res, _ := roundTrip(t, c, br, "GET /"+f.tok+"/ HTTP/1.1\r\nHost: edge.test\r\n\r\n"); res.StatusCode != 200 {
			t.Errorf("after a release: %d, want 200", res.StatusCode)
		}
	})
	t.Run("slow and idle clients", func(t *testing.T) {
		advance(time.Hour)
		waitFor(t, "earlier connections to close", func() bool { return testutil.ToFloat64(f.metrics.conns) == 0 })
		slow0 := testutil.ToFloat64(f.metrics.timeouts.WithLabelValues("header"))
		// A head begun after a request, never finished: cut off after
		// HeaderTimeout, counted slow.
		c, br := f.dialTLS(t, nil)
		roundTrip(t, c, br, "GET /"+f.tok+"/ HTTP/1.1\r\nHost: edge.test\r\n\r\n")
		io.WriteString(c, "GET /"+f.tok+"/ HTTP/1.1\r\n")
		start := time.Now()
		if _, err := br.ReadByte(); err == nil {
			t.Error("a slow head was answered")
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("slow head cut off after %v", d)
		}
		waitFor(t, "the slow client to be counted", func() bool {
			return testutil.ToFloat64(f.metrics.timeouts.WithLabelValues("header")) == slow0+1
		})
		// An idle keep-alive connection: closed after IdleTimeout, not
		// counted slow.
		c, br = f.dialTLS(t, nil)
		roundTrip(t, c, br, "GET /"+f.tok+"/ HTTP/1.1\r\nHost: edge.test\r\n\r\n")
		if _, err := br.ReadByte(); err == nil {
			t.Error("an idle connection sent something")
		}
		// No request at all after the handshake: slow, as on net/http.
		c, br = f.dialTLS(t, nil)
		if _, err := br.ReadByte(); err == nil {
			t.Error("a connection without a request sent something")
		}
		waitFor(t, "the connections to close", func() bool { return testutil.ToFloat64(f.metrics.conns) == 0 })
		if got := testutil.ToFloat64(f.metrics.timeouts.WithLabelValues("header")); got != slow0+2 {
			t.Errorf("slow clients counted %v, want %v", got, slow0+2)
		}
		// A handshake never finished.
		raw, err := net.Dial("tcp", f.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		raw.Write([]byte{0x16, 0x03, 0x01})
		waitFor(t, "the slow handshake to be counted", func() bool {
			return testutil.ToFloat64(f.metrics.timeouts.WithLabelValues("handshake")) == 1
		})
	})
}

func TestServer_H1Balancers(t *testing.T) {
	t.Run("X-Forwarded-For from a trusted balancer", func(t *testing.T) {
		f := startH1Edge(t, Config{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
		c, br := f.dialTLS(t, nil)
		_, body := roundTrip(t, c, br, "GET /"+f.tok+"/ HTTP/1.1\r\nHost: edge.test\r\nX-Forwarded-For: 1.2.3.4, 203.0.113.9\r\nX-Forwarded-Proto: http\r\n\r\n")
		if body != "GET / xff=203.0.113.9 xfp=https cookie= body=" {
			t.Errorf("backend got %q", body)
		}
		if f.h1.admits.Load() != 1 {
			t.Errorf("not on the fast path")
		}
	})
	t.Run("X-Forwarded-For from anyone else", func(t *testing.T) {
		f := startH1Edge(t, Config{})
		c, br := f.dialTLS(t, nil)
		_, body := roundTrip(t, c, br, "GET /"+f.tok+"/ HTTP/1.1\r\nHost: edge.test\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n")
		if body != "GET / xff=127.0.0.1 xfp=https cookie= body=" {
			t.Errorf("backend got %q", body)
		}
	})
	t.Run("PROXY protocol", func(t *testing.T) {
		f := startH1Edge(t, Config{ProxyProtocol: true, TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}})
		for _, prefix := range [][]byte{
			[]byte("PROXY TCP4 203.0.113.9 127.0.0.1 5555 443\r\n"),
			v2Header(1, netip.MustParseAddrPort("[2001:db8::2]:4445")),
		} {
			c, br := f.dialTLS(t, prefix)
			_, body := roundTrip(t, c, br, "GET /"+f.tok+"/ HTTP/1.1\r\nHost: edge.test\r\n\r\n")
			want := "203.0.113.9"
			if prefix[0] != 'P' {
				want = "2001:db8::2"
			}
			if body != "GET / xff="+want+" xfp=https cookie= body=" {
				t.Errorf("backend got %q, want xff=%s", body, want)
			}
		}
		// No header: no handshake.
		c, err := net.Dial("tcp", f.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		cfg := f.ca.clientTLS("edge.test")
		tc := tls.Client(c, cfg)
		tc.SetDeadline(time.Now().Add(5 * time.Second))
		if err := tc.Handshake(); err == nil {
			t.Error("a handshake without a PROXY header succeeded")
		}
	})
}

// countingConn counts the bytes read from it once counting is set.
type countingConn struct {
	net.Conn
	counting atomic.Bool
	n        atomic.Int64
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if c.counting.Load() {
		c.n.Add(int64(n))
	}
	return n, err
}

func TestServer_H1ClientCloses(t *testing.T) {
	f := startH1Edge(t, Config{})
	raw, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	cc := &countingConn{Conn: raw}
	cfg := f.ca.clientTLS("edge.test")
	cfg.NextProtos = []string{"http/1.1"}
	tc := tls.Client(cc, cfg)
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	// A request first, so that the session ticket is read.
	if res, _ := roundTrip(t, tc, bufio.NewReader(tc), "GET /"+f.tok+"/a HTTP/1.1\r\nHost: edge.test\r\n\r\n"); res.StatusCode != 200 {
		t.Fatalf("GET: %d", res.StatusCode)
	}
	cc.counting.Store(true)
	if err := tc.CloseWrite(); err != nil { // close_notify
		t.Fatal(err)
	}
	if n, err := tc.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("read after close_notify: %d, %v; want the connection closed", n, err)
	}
	// The edge closed the connection without a close_notify of its own
	// (a TLS record, 24 bytes here), as nginx does.
	if n := cc.n.Load(); n != 0 {
		t.Errorf("the edge sent %d bytes after the client's close_notify, want 0", n)
	}
	waitFor(t, "the connection to be released", func() bool { return testutil.ToFloat64(f.metrics.conns) == 0 })
}

// The goroutines that handshake TLS connections accept them too: one
// waits in Accept while the others serve, those done with a connection
// wait there too, up to maxIdleHandshakers, and Shutdown ends them.
func TestServer_Handshakers(t *testing.T) {
	f := startH1Edge(t, Config{})
	openAll := func(n int) []*tls.Conn {
		var conns []*tls.Conn
		for range n {
			c, _ := f.dialTLS(t, nil)
			conns = append(conns, c)
		}
		waitFor(t, "one handshaker to accept", func() bool { return f.srv.idleHandshakers.Load() == 1 })
		return conns
	}

	// Fewer than the cap: every handshaker waits once its connection
	// ends, and the next connection goes to one of them (a new one
	// would leave the count where it was).
	const few = 8
	for _, c := range openAll(few) {
		c.Close()
	}
	waitFor(t, "the handshakers to go idle", func() bool { return f.srv.idleHandshakers.Load() == few+1 })
	c, br := f.dialTLS(t, nil)
	if n := f.srv.idleHandshakers.Load(); n != few {
		t.Errorf("%d idle handshakers while a connection is served, want %d", n, few)
	}
	if res, _ := roundTrip(t, c, br, "GET /"+f.tok+"/a HTTP/1.1\r\nHost: edge.test\r\n\r\n"); res.StatusCode != 200 {
		t.Errorf("GET: %d", res.StatusCode)
	}
	c.Close()
	waitFor(t, "the handshaker to go idle again", func() bool { return f.srv.idleHandshakers.Load() == few+1 })

	// More than the cap: the others exit.
	for _, c := range openAll(maxIdleHandshakers + 16) {
		c.Close()
	}
	waitFor(t, "the handshakers to go idle", func() bool { return f.srv.idleHandshakers.Load() == maxIdleHandshakers })

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := f.srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if n := f.srv.idleHandshakers.Load(); n != 0 {
		t.Errorf("%d idle handshakers after Shutdown, want 0", n)
	}
}
