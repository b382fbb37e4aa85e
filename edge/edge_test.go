package edge

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// echo answers with what the edge passed on: the client address, whether
// it counts as HTTPS, and the protocol.
var echo = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	io.WriteString(w, r.RemoteAddr+" tls="+boolStr(r.TLS != nil)+" "+r.Proto)
})

func boolStr(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

type edgeFixture struct {
	srv     *Server
	addr    string // Serve's
	http    string // ServeHTTP's, when started
	ca      *testCA
	metrics *Metrics
}

// startEdge serves echo through an edge with cfg (TLS: when withTLS, a
// certificate for edge.test from a test CA).
func startEdge(t testing.TB, cfg Config, withTLS bool) *edgeFixture {
	t.Helper()
	return startEdgeOn(t, cfg, withTLS, func() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") })
}

// startEdgeOn is startEdge with the TLS listener from listen.
func startEdgeOn(t testing.TB, cfg Config, withTLS bool, listen func() (net.Listener, error)) *edgeFixture {
	t.Helper()
	f := &edgeFixture{ca: newTestCA(t)}
	if cfg.Handler == nil {
		cfg.Handler = echo
	}
	if withTLS {
		cf, kf := f.ca.issue(t, t.TempDir(), "edge.test", "*.edge.test")
		files, err := LoadCertFiles(cf, kf)
		if err != nil {
			t.Fatal(err)
		}
		cfg.TLS = TLSConfig(files.GetCertificate)
	}
	f.metrics = NewMetrics(prometheus.NewRegistry())
	cfg.Metrics = f.metrics
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f.srv = srv
	ln, err := listen()
	if err != nil {
		t.Fatal(err)
	}
	f.addr = ln.Addr().String()
	go srv.Serve(ln)
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.http = hl.Addr().String()
	go srv.ServeHTTP(hl)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return f
}

func (f *edgeFixture) client(h2 bool) *http.Client {
	tr := &http.Transport{
		TLSClientConfig:   f.ca.clientTLS("edge.test"),
		ForceAttemptHTTP2: h2,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, f.addr)
		},
	}
	if !h2 {
		tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
	}
	return &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func get(t *testing.T, c *http.Client, url string, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "Host" {
			req.Host = hdr[i+1]
			continue
		}
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res, string(b)
}

func TestServer_TLS(t *testing.T) {
	f := startEdge(t, Config{}, true)

	for _, h2 := range []bool{true, false} {
		res, body := get(t, f.client(h2), "https://edge.test/x")
		wantProto := "HTTP/1.1"
		if h2 {
			wantProto = "HTTP/2.0"
		}
		if res.StatusCode != 200 || !strings.HasSuffix(body, "tls=yes "+wantProto) {
			t.Errorf("h2=%v: %d %q, want tls=yes %s", h2, res.StatusCode, body, wantProto)
		}
	}
	if got := testutil.ToFloat64(f.metrics.handshakes.WithLabelValues("h2")); got != 1 {
		t.Errorf("h2 handshakes = %v, want 1", got)
	}

	// Old protocol versions and non-AEAD suites are refused.
	refused := []struct {
		name string
		cfg  *tls.Config
	}{
		{"TLS 1.1", &tls.Config{MaxVersion: tls.VersionTLS11}},
		{"TLS 1.2 CBC", &tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA}}},
	}
	for _, tt := range refused {
		cfg := tt.cfg
		cfg.RootCAs, cfg.ServerName = f.ca.pool, "edge.test"
		c, err := tls.Dial("tcp", f.addr, cfg)
		if err == nil {
			c.Close()
			t.Errorf("%s: handshake succeeded, want refused", tt.name)
		}
	}
	c, err := tls.Dial("tcp", f.addr, &tls.Config{RootCAs: f.ca.pool, ServerName: "edge.test", MaxVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatalf("TLS 1.2 with an AEAD suite: %v", err)
	}
	c.Close()
}

func TestServer_Redirect(t *testing.T) {
	acme := 0
	f := startEdge(t, Config{HTTPSPort: 8443, ACMEHTTP: func(w http.ResponseWriter, r *http.Request) bool {
		acme++
		io.WriteString(w, "challenge")
		return true
	}, TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}, true)
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

	res, _ := get(t, c, "http://"+f.http+"/tok/path?q=1", "Host", "a.edge.test")
	if res.StatusCode != http.StatusPermanentRedirect || res.Header.Get("Location") != "https://a.edge.test:8443/tok/path?q=1" {
		t.Errorf("redirect: %d to %q", res.StatusCode, res.Header.Get("Location"))
	}
	_, body := get(t, c, "http://"+f.http+"/.well-known/acme-challenge/abc")
	if body != "challenge" || acme != 1 {
		t.Errorf("ACME challenge: %q, %d calls", body, acme)
	}
	// A trusted balancer that terminated TLS itself is served, not redirected.
	res, body = get(t, c, "http://"+f.http+"/x", "X-Forwarded-Proto", "https", "X-Forwarded-For", "203.0.113.9")
	if res.StatusCode != 200 || !strings.HasPrefix(body, "203.0.113.9:0 tls=yes") {
		t.Errorf("from a trusted balancer: %d %q", res.StatusCode, body)
	}
}

func TestServer_TrustedProxies(t *testing.T) {
	tests := []struct {
		name    string
		trusted []string
		xff     []string
		xfp     string
		want    string
	}{
		{"untrusted peer: headers ignored", nil, []string{"203.0.113.9"}, "https", "127.0.0.1:"},
		{"trusted peer", []string{"127.0.0.0/8"}, []string{"203.0.113.9"}, "https", "203.0.113.9:0 tls=yes"},
		{"the last untrusted hop", []string{"127.0.0.0/8", "10.0.0.0/8"}, []string{"198.51.100.1, 203.0.113.9", "10.1.2.3"}, "", "203.0.113.9:0 tls=no"},
		{"a spoofed first hop is not believed", []string{"127.0.0.0/8"}, []string{"1.2.3.4, 203.0.113.9"}, "", "203.0.113.9:0"},
		{"garbage stops the walk", []string{"127.0.0.0/8"}, []string{"1.2.3.4, bogus"}, "", "127.0.0.1:"},
		{"no header", []string{"127.0.0.0/8"}, nil, "", "127.0.0.1:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var pfx []netip.Prefix
			for _, s := range tt.trusted {
				pfx = append(pfx, netip.MustParsePrefix(s))
			}
			f := startEdge(t, Config{TrustedProxies: pfx}, false)
			req, _ := http.NewRequest(http.MethodGet, "http://"+f.addr+"/", nil)
			for _, v := range tt.xff {
				req.Header.Add("X-Forwarded-For", v)
			}
			if tt.xfp != "" {
				req.Header.Set("X-Forwarded-Proto", tt.xfp)
			}
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if !strings.HasPrefix(string(b), tt.want) {
				t.Errorf("edge passed on %q, want prefix %q", b, tt.want)
			}
		})
	}
}

// rawGet sends a GET after prefix on a new connection and returns the
// response's status line and body, or an error.
func rawGet(addr string, prefix []byte) (string, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write(append(prefix, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"...))
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "", err
	}
	b, _ := io.ReadAll(res.Body)
	return res.Status + " " + string(b), nil
}

func v2Header(cmd byte, src netip.AddrPort) []byte {
	b := append([]byte(nil), v2Sig...)
	if !src.IsValid() {
		return append(b, 0x20|cmd, 0x00, 0, 0)
	}
	if src.Addr().Is4() {
		b = append(b, 0x20|cmd, 0x11, 0, 12)
		a := src.Addr().As4()
		b = append(b, a[:]...)
		b = append(b, 127, 0, 0, 1)
		b = binary.BigEndian.AppendUint16(b, src.Port())
		return binary.BigEndian.AppendUint16(b, 443)
	}
	b = append(b, 0x20|cmd, 0x21, 0, 36+3)
	a := src.Addr().As16()
	b = append(b, a[:]...)
	b = append(b, make([]byte, 16)...)
	b = binary.BigEndian.AppendUint16(b, src.Port())
	b = binary.BigEndian.AppendUint16(b, 443)
	return append(b, 0x04, 0, 0) // an empty TLV (NOOP), skipped
}

func TestServer_ProxyProtocol(t *testing.T) {
	f := startEdge(t, Config{ProxyProtocol: true, TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}, false)
	tests := []struct {
		name   string
		prefix []byte
		want   string // net/http answers a connection that fails to read with 400
	}{
		{"v1 TCP4", []byte("PROXY TCP4 203.0.113.9 127.0.0.1 5555 80\r\n"), "200 OK 203.0.113.9:5555"},
		{"v1 TCP6", []byte("PROXY TCP6 2001:db8::1 ::1 5555 80\r\n"), "200 OK [2001:db8::1]:5555"},
		{"v1 UNKNOWN", []byte("PROXY UNKNOWN\r\n"), "200 OK 127.0.0.1:"},
		{"v2 IPv4", v2Header(1, netip.MustParseAddrPort("198.51.100.7:4444")), "200 OK 198.51.100.7:4444"},
		{"v2 IPv6 with a TLV", v2Header(1, netip.MustParseAddrPort("[2001:db8::2]:4445")), "200 OK [2001:db8::2]:4445"},
		{"v2 LOCAL", v2Header(0, netip.AddrPort{}), "200 OK 127.0.0.1:"},
		{"no header", nil, "400 "},
		{"v1 bad port", []byte("PROXY TCP4 203.0.113.9 127.0.0.1 05555 80\r\n"), "400 "},
		{"v1 family mismatch", []byte("PROXY TCP4 2001:db8::1 127.0.0.1 5555 80\r\n"), "400 "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := rawGet(f.addr, tt.prefix)
			if err != nil || !strings.HasPrefix(got, tt.want) {
				t.Errorf("got %q, %v; want prefix %q", got, err, tt.want)
			}
		})
	}
	if n := testutil.ToFloat64(f.metrics.proxyErrors); n != 3 {
		t.Errorf("PROXY errors counted: %v, want 3", n)
	}

	// A peer outside TrustedProxies may not name a client.
	g := startEdge(t, Config{ProxyProtocol: true, TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}, false)
	if got, err := rawGet(g.addr, []byte("PROXY TCP4 203.0.113.9 127.0.0.1 5555 80\r\n")); err == nil && !strings.HasPrefix(got, "400 ") {
		t.Errorf("an untrusted peer's PROXY header was accepted: %q", got)
	}
}

func TestServer_Limits(t *testing.T) {
	now := time.Unix(1000, 0)
	f := startEdge(t, Config{
		Limits: Limits{ConnsPerIP: 2, RatePerIP: 1, Burst: 3, MaxURLBytes: 100, MaxHeaderBytes: 200, HeaderTimeout: 300 * time.Millisecond},
		Now:    func() time.Time { return now },
	}, false)

	t.Run("rate", func(t *testing.T) {
		c := &http.Client{Transport: &http.Transport{}}
		defer c.CloseIdleConnections()
		for i := 0; i < 3; i++ {
			if res, body := get(t, c, "http://"+f.addr+"/"); res.StatusCode != 200 {
				t.Fatalf("request %d within the burst: %d %s", i, res.StatusCode, body)
			}
		}
		res, _ := get(t, c, "http://"+f.addr+"/")
		if res.StatusCode != http.StatusTooManyRequests || res.Header.Get("Retry-After") != "1" {
			t.Errorf("over the rate: %d, Retry-After %q; want 429, 1", res.StatusCode, res.Header.Get("Retry-After"))
		}
		now = now.Add(2 * time.Second) // two tokens back
		if res, _ := get(t, c, "http://"+f.addr+"/"); res.StatusCode != 200 {
			t.Errorf("after refill: %d", res.StatusCode)
		}
		if n := testutil.ToFloat64(f.metrics.rateLimit); n != 1 {
			t.Errorf("rate_limit counted %v, want 1", n)
		}
	})
	t.Run("sizes", func(t *testing.T) {
		now = now.Add(time.Hour)
		c := &http.Client{Transport: &http.Transport{}}
		defer c.CloseIdleConnections()
		if res, _ := get(t, c, "http://"+f.addr+"/"+strings.Repeat("a", 120)); res.StatusCode != http.StatusRequestURITooLong {
			t.Errorf("long URL: %d, want 414", res.StatusCode)
		}
		if res, _ := get(t, c, "http://"+f.addr+"/", "X-Big", strings.Repeat("b", 250)); res.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("big header: %d, want 431", res.StatusCode)
		}
		if testutil.ToFloat64(f.metrics.urlSize) != 1 || testutil.ToFloat64(f.metrics.headerSize) != 1 {
			t.Errorf("size refusals not counted")
		}
	})
	t.Run("connections", func(t *testing.T) {
		now = now.Add(time.Hour)
		// The earlier subtests' connections, closed by their clients, count
		// until the server has seen them close (late on a busy machine).
		waitFor(t, "the earlier connections to be released", func() bool {
			f.srv.conns.mu.Lock()
			defer f.srv.conns.mu.Unlock()
			return len(f.srv.conns.n) == 0
		})
		var held []net.Conn
		for i := 0; i < 2; i++ {
			c, err := net.Dial("tcp", f.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
			res, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			if res.StatusCode != http.StatusOK {
				t.Fatalf("connection %d within the limit: %s, want 200", i+1, res.Status)
			}
			held = append(held, c)
		}
		got, err := rawGet(f.addr, nil)
		if err != nil || !strings.HasPrefix(got, "429 ") {
			t.Errorf("third connection: %q, %v; want 429", got, err)
		}
		held[0].Close()
		waitFor(t, "the closed connection to be released", func() bool {
			got, err := rawGet(f.addr, nil)
			return err == nil && strings.HasPrefix(got, "200 ")
		})
		if n := testutil.ToFloat64(f.metrics.connLimit); n < 1 {
			t.Errorf("conn_limit counted %v", n)
		}
	})
	t.Run("slow client", func(t *testing.T) {
		c, err := net.Dial("tcp", f.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n")) // never finished
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		res, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || res.StatusCode != http.StatusRequestTimeout {
			t.Fatalf("slow head: %v, %v; want 408", res, err)
		}
		waitFor(t, "the slow client to be counted", func() bool {
			return testutil.ToFloat64(f.metrics.timeouts.WithLabelValues("header")) == 1
		})
	})
}

func TestServer_SlowHandshake(t *testing.T) {
	f := startEdge(t, Config{Limits: Limits{HeaderTimeout: 200 * time.Millisecond}}, true)
	c, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte{0x16, 0x03, 0x01}) // the start of a ClientHello, no more
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, context.DeadlineExceeded) {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("the edge kept a slow handshake open")
		}
	}
	waitFor(t, "the slow handshake to be counted", func() bool {
		return testutil.ToFloat64(f.metrics.timeouts.WithLabelValues("handshake")) == 1
	})
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func FuzzReadProxyHeader(f *testing.F) {
	f.Add([]byte("PROXY TCP4 203.0.113.9 127.0.0.1 5555 80\r\nGET"))
	f.Add([]byte("PROXY TCP6 2001:db8::1 ::1 5555 80\r\n"))
	f.Add([]byte("PROXY UNKNOWN whatever\r\n"))
	f.Add(v2Header(1, netip.MustParseAddrPort("198.51.100.7:4444")))
	f.Add(v2Header(1, netip.MustParseAddrPort("[2001:db8::2]:4445")))
	f.Add(v2Header(0, netip.AddrPort{}))
	f.Add([]byte("GET / HTTP/1.1\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		br := bufio.NewReaderSize(strings.NewReader(string(b)), 256)
		ap, err := readProxyHeader(br)
		if err != nil {
			return
		}
		if ap.IsValid() && ap.Addr().Is4In6() {
			t.Errorf("address %v not unmapped", ap)
		}
		// What a header consumed is never more than the input, and the
		// rest is left to read.
		rest, _ := io.ReadAll(br)
		if len(rest) > len(b) {
			t.Errorf("read %d bytes after a header, from %d", len(rest), len(b))
		}
		if bytes := len(b) - len(rest); bytes > v1MaxLen && bytes > 16+v2MaxLen {
			t.Errorf("header of %d bytes accepted", bytes)
		}
	})
}
