package proxy

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/berthhq/berth/token"
)

const (
	hostA      = "bk_aaaaaaaaaaaaaaaa"
	hostB      = "bk_bbbbbbbbbbbbbbbb"
	hostGone   = "bk_gggggggggggggggg"
	hostSuffix = "berth.test"
)

type hostFixture struct {
	signer *token.Signer
	srv    *httptest.Server
	client *http.Client // HTTP/2 over TLS, with a cookie jar, every host dialled to srv
	base   *url.URL
}

// newHostFixture serves p.Hosts over TLS with HTTP/2, backends A and B
// echoing what they got, and a gone backend.
func newHostFixture(t *testing.T) *hostFixture {
	t.Helper()
	signer, err := token.NewSigner(testKey)
	if err != nil {
		t.Fatal(err)
	}
	echo := func(name string) string {
		be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("Upgrade") != "" {
				c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
				if err != nil {
					return
				}
				defer c.CloseNow()
				typ, b, err := c.Read(r.Context())
				if err == nil {
					c.Write(r.Context(), typ, append([]byte(name+" "+r.URL.Path+" "), b...))
				}
				return
			}
			body, _ := io.ReadAll(r.Body)
			io.WriteString(w, name+" "+r.Method+" "+r.URL.RequestURI()+" cookie="+r.Header.Get("Cookie")+
				" backend="+r.Header.Get(HeaderBackend)+" body="+string(body))
		}))
		t.Cleanup(be.Close)
		return be.Listener.Addr().String()
	}
	res := &resolver{
		routes: map[string]Route{
			hostA: {BackendID: hostA, Addr: echo("A"), Secret: "a"},
			hostB: {BackendID: hostB, Addr: echo("B"), Secret: "b"},
		},
		errs:     map[string]error{hostGone: ErrGone},
		starting: map[string]chan struct{}{},
	}
	p := New(Config{Resolver: res, Signer: signer, Now: func() time.Time { return now }})
	t.Cleanup(func() { p.Close() })
	srv := httptest.NewUnstartedServer(p.Hosts(hostSuffix))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)

	jar, _ := cookiejar.New(nil)
	addr := srv.Listener.Addr().String()
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true},
		ForceAttemptHTTP2: true,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
	}
	t.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr, Jar: jar}
	_, port, _ := net.SplitHostPort(addr)
	return &hostFixture{signer: signer, srv: srv, client: client, base: &url.URL{Scheme: "https", Host: "berth.test:" + port}}
}

// url is the URL connect would give for id.
func (f *hostFixture) url(t *testing.T, id string) string {
	t.Helper()
	u, ok := HostURL(f.signer, f.base, hostSuffix, id, f.signer.Issue(id, "alice", now.Add(time.Hour)))
	if !ok {
		t.Fatalf("no host URL for %s", id)
	}
	return u
}

func (f *hostFixture) get(t *testing.T, u string, hdr ...string) (int, string, *http.Response) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := f.client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b), res
}

func TestHosts_FirstURLSetsCookieThenAbsolutePaths(t *testing.T) {
	f := newHostFixture(t)
	first := f.url(t, hostA)
	f.client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	status, _, res := f.get(t, first+"app?x=1")
	if status != http.StatusSeeOther {
		t.Fatalf("first URL: status %d, want 303", status)
	}
	if loc := res.Header.Get("Location"); loc != "/app?x=1" {
		t.Errorf("Location = %q, want /app?x=1 (the token dropped)", loc)
	}
	sc := res.Header.Get("Set-Cookie")
	for _, want := range []string{CookieName + "=", "Path=/", "Secure", "HttpOnly", "SameSite=Lax", "Max-Age=3600"} {
		if !strings.Contains(sc, want) {
			t.Errorf("Set-Cookie %q lacks %q", sc, want)
		}
	}
	if strings.Contains(strings.ToLower(sc), "domain=") {
		t.Errorf("Set-Cookie %q names a domain; the cookie must be host-only", sc)
	}
	if res.ProtoMajor != 2 {
		t.Errorf("protocol %s, want HTTP/2 over ALPN", res.Proto)
	}
	f.client.CheckRedirect = nil

	host := strings.SplitN(strings.TrimPrefix(first, "https://"), "/", 2)[0]
	status, body, _ := f.get(t, "https://"+host+"/_next/static/app.js?v=2", "Cookie", "theirs=1")
	if status != http.StatusOK {
		t.Fatalf("absolute path with the cookie: %d %s", status, body)
	}
	want := "A GET /_next/static/app.js?v=2 cookie=theirs=1 backend=" + hostA
	if !strings.HasPrefix(body, want) {
		t.Errorf("backend saw %q, want %q (Berth's cookie never reaches it)", body, want)
	}

	// A POST on the first URL is forwarded without the token.
	tok := strings.SplitN(strings.SplitN(first, "/", 4)[3], "/", 2)[0]
	res, err := f.client.Post("https://"+host+"/"+tok+"/form", "text/plain", strings.NewReader("hi"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if got := string(b); res.StatusCode != 200 || !strings.HasPrefix(got, "A POST /form ") || !strings.HasSuffix(got, "body=hi") {
		t.Errorf("POST on the first URL: %d %q", res.StatusCode, got)
	}

	// A WebSocket, HTTP/1.1 over TLS, with the cookie.
	u, _ := url.Parse("https://" + host)
	hdr := http.Header{}
	for _, c := range f.client.Jar.Cookies(u) {
		hdr.Add("Cookie", c.Name+"="+c.Value)
	}
	tr := f.client.Transport.(*http.Transport).Clone()
	tr.ForceAttemptHTTP2 = false
	tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "wss://"+host+"/ws", &websocket.DialOptions{HTTPHeader: hdr, HTTPClient: &http.Client{Transport: tr}})
	if err != nil {
		t.Fatalf("websocket: %v", err)
	}
	defer c.CloseNow()
	c.Write(ctx, websocket.MessageText, []byte("ping"))
	_, msg, err := c.Read(ctx)
	if err != nil || string(msg) != "A /ws ping" {
		t.Errorf("websocket echo = %q, %v; want %q", msg, err, "A /ws ping")
	}
}

func TestHosts_Refusals(t *testing.T) {
	f := newHostFixture(t)
	f.client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	hostOf := func(u string) string { return strings.SplitN(strings.TrimPrefix(u, "https://"), "/", 2)[0] }
	aURL, bURL := f.url(t, hostA), f.url(t, hostB)
	_, _, res := f.get(t, aURL)
	var aCookie string
	for _, c := range res.Cookies() {
		if c.Name == CookieName {
			aCookie = c.Name + "=" + c.Value
		}
	}
	if aCookie == "" {
		t.Fatal("no cookie for A")
	}
	labelA, _ := f.signer.HostLabel(hostA)
	_, port, _ := net.SplitHostPort(f.base.Host)
	forged := labelA[:len(labelA)-1] + "x"
	if labelA[len(labelA)-1] == 'x' {
		forged = labelA[:len(labelA)-1] + "y"
	}
	goneTok := f.signer.Issue(hostGone, "alice", now.Add(time.Hour))
	goneLabel, _ := f.signer.HostLabel(hostGone)
	goneHost := goneLabel + "." + hostSuffix + ":" + port

	tests := []struct {
		name   string
		url    string
		hdr    []string
		status int
	}{
		{"forged label", "https://" + forged + "." + hostSuffix + ":" + port + "/", []string{"Cookie", aCookie}, 401},
		{"A's cookie on B's host", "https://" + hostOf(bURL) + "/page", []string{"Cookie", aCookie}, 401},
		{"A's token in B's first URL", "https://" + hostOf(bURL) + "/" + strings.SplitN(aURL, "/", 5)[3] + "/", nil, 401},
		{"no cookie", "https://" + hostOf(aURL) + "/page", nil, 401},
		{"terminated backend", "https://" + goneHost + "/page", []string{"Cookie", CookieName + "=" + goneTok}, 410},
		{"terminated backend's first URL", "https://" + goneHost + "/" + goneTok + "/x", nil, 303},
		{"A's cookie on A's host", "https://" + hostOf(aURL) + "/page", []string{"Cookie", aCookie}, 200},
		{"climbing path", "https://" + hostOf(aURL) + "/a/../../etc", []string{"Cookie", aCookie}, 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A fresh jar: only the cookie the case sends.
			f.client.Jar, _ = cookiejar.New(nil)
			status, body, _ := f.get(t, tt.url, tt.hdr...)
			if status != tt.status {
				t.Errorf("status %d (%s), want %d", status, body, tt.status)
			}
		})
	}
}

func TestHosts_OtherHostsUsePaths(t *testing.T) {
	f := newHostFixture(t)
	tok := f.signer.Issue(hostA, "alice", now.Add(time.Hour))
	status, body, _ := f.get(t, "https://"+f.base.Host+"/"+tok+"/p")
	if status != 200 || !strings.HasPrefix(body, "A GET /p ") {
		t.Errorf("path mode on the bare suffix: %d %q", status, body)
	}
}

// A backend another replica runs: the request goes to that replica's proxy
// with the token back in its path (the peer routes by path), and without
// Berth's cookie.
func TestHosts_PeerGetsTokenPath(t *testing.T) {
	f := newHostFixture(t)
	p, seen := peerProxy(t, f.signer)
	f.srv.Config.Handler = p.Hosts(hostSuffix)
	tok := f.signer.Issue(peerBackend, "alice", now.Add(time.Hour))
	label, _ := f.signer.HostLabel(peerBackend)
	_, port, _ := net.SplitHostPort(f.base.Host)
	status, body, _ := f.get(t, "https://"+label+"."+hostSuffix+":"+port+"/abs/x?q=1", "Cookie", CookieName+"="+tok+"; app=1")
	if status != 200 {
		t.Fatalf("via a peer: %d %s", status, body)
	}
	if got, want := <-seen, "/"+tok+"/abs/x?q=1 cookie=app=1 backend="; got != want {
		t.Errorf("the peer got %q, want %q", got, want)
	}
}

// peerBackend is the backend peerProxy's proxy finds on another replica.
const peerBackend = "bk_rrrrrrrrrrrrrrrr"

// peerProxy is a proxy whose one route, peerBackend, runs on another
// replica: a server that sends what it got on seen (the request URI, the
// Cookie header, the backend header).
func peerProxy(t *testing.T, signer *token.Signer) (p *Proxy, seen chan string) {
	t.Helper()
	seen = make(chan string, 1)
	peer := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.URL.RequestURI() + " cookie=" + r.Header.Get("Cookie") + " backend=" + r.Header.Get(HeaderBackend)
	}))
	t.Cleanup(peer.Close)
	p = New(Config{Resolver: &resolver{
		routes:   map[string]Route{peerBackend: {BackendID: peerBackend, Addr: peer.Listener.Addr().String(), Peer: true}},
		errs:     map[string]error{},
		starting: map[string]chan struct{}{},
	}, Signer: signer, Now: func() time.Time { return now }})
	t.Cleanup(func() { p.Close() })
	return p, seen
}
