package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berthhq/berth/proxy/internal/h1"
	"github.com/berthhq/berth/token"
)

// hostHooks admit every request as the edge does (without limits), and
// serve a connection handed off with net/http and Proxy.Hosts, counting
// the hand-offs.
type hostHooks struct {
	h        http.Handler
	handOffs *atomic.Int32
}

func (hostHooks) Idle()                {}
func (hostHooks) Admit(Head) Admission { return Admission{} }
func (h hostHooks) HandOff(c net.Conn) {
	h.handOffs.Add(1)
	go (&http.Server{Handler: h.h}).Serve(&oneConnListener{c: c})
}

// oneConnListener accepts c, then waits for Close.
type oneConnListener struct {
	c    net.Conn
	done chan struct{}
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	if c := l.c; c != nil {
		l.c, l.done = nil, make(chan struct{})
		return c, nil
	}
	<-l.done
	return nil, net.ErrClosed
}
func (l *oneConnListener) Close() error   { return nil }
func (l *oneConnListener) Addr() net.Addr { return handoffAddr{} }

// A later request on a backend's host, with its cookie, takes the fast
// path on the edge's connections (ServeConn), and is answered as net/http's
// path (hostRouter) answers it: same status, body and headers, and the
// backend sees the same request, Berth's cookie removed.
func TestServer_HostRoutedLikeNetHTTP(t *testing.T) {
	signer, err := token.NewSigner(testKey)
	if err != nil {
		t.Fatal(err)
	}
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Seen-Cookie", strings.Join(r.Header.Values("Cookie"), "|"))
		io.WriteString(w, r.Method+" "+r.RequestURI+" host="+r.Host+" cookies="+strings.Join(r.Header.Values("Cookie"), "|")+
			" backend="+r.Header.Get(HeaderBackend)+" user="+r.Header.Get(HeaderUser)+" secret="+r.Header.Get(HeaderSecret)+
			" xfh="+r.Header.Get("X-Forwarded-Host")+" xfp="+r.Header.Get("X-Forwarded-Proto")+" body="+string(body))
	}))
	t.Cleanup(be.Close)
	res := &resolver{
		routes: map[string]Route{
			hostA: {BackendID: hostA, Addr: be.Listener.Addr().String(), Secret: "a"},
			hostB: {BackendID: hostB, Addr: be.Listener.Addr().String(), Secret: "b"},
		},
		errs:     map[string]error{hostGone: ErrGone},
		starting: map[string]chan struct{}{},
	}
	p := New(Config{Resolver: res, Signer: signer, Now: func() time.Time { return now }})
	t.Cleanup(func() { p.Close() })

	// net/http's path, plain HTTP.
	ref := httptest.NewServer(p.Hosts(hostSuffix))
	t.Cleanup(ref.Close)
	// The fast path: the edge's ServeConn, plain HTTP too.
	var handOffs atomic.Int32
	srv := p.NewServer(ServerConfig{NoEventLoop: true, HostSuffix: hostSuffix})
	// Not rawListener: ServeConn returns when it hands a connection off,
	// which must then stay open.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go srv.ServeConn(c, hostHooks{h: p.Hosts(hostSuffix), handOffs: &handOffs})
		}
	}()
	addr := ln.Addr().String()

	label := func(id string) string { l, _ := signer.HostLabel(id); return l + "." + hostSuffix }
	tokA := signer.Issue(hostA, "alice", now.Add(time.Hour))
	tokB := signer.Issue(hostB, "bob", now.Add(time.Hour))
	tokGone := signer.Issue(hostGone, "alice", now.Add(time.Hour))
	expired := signer.Issue(hostA, "alice", now)
	other, _ := token.NewSigner([]byte(strings.Repeat("o", token.MinKeyLen)))
	forgedTok := other.Issue(hostA, "alice", now.Add(time.Hour))
	labelA, _ := signer.HostLabel(hostA)
	forged := labelA[:len(labelA)-1] + map[bool]string{true: "y", false: "x"}[labelA[len(labelA)-1] == 'x']
	ck := CookieName + "=" + tokA

	tests := []struct {
		name string
		head string // the request, Host and all
		fast bool   // the fast path answers it
	}{
		{"the cookie", "GET /page?x=1 HTTP/1.1\r\nHost: " + label(hostA) + "\r\nCookie: " + ck + "\r\n\r\n", true},
		{"root", "GET / HTTP/1.1\r\nHost: " + label(hostA) + "\r\nCookie: " + ck + "\r\n\r\n", true},
		{"HEAD", "HEAD /page HTTP/1.1\r\nHost: " + label(hostA) + "\r\nCookie: " + ck + "\r\n\r\n", true},
		{"others kept", "GET /p HTTP/1.1\r\nHost: " + label(hostA) + "\r\nCookie: a=1;  " + ck + " ;b=2\r\n\r\n", true},
		{"several Cookie headers", "GET /p HTTP/1.1\r\nHost: " + label(hostA) + "\r\nCookie: a=1\r\ncookie: " + ck + "\r\nCookie: " + CookieName + "X=2; " + ck + "; c=3\r\n\r\n", true},
		{"empty parts", "GET /p HTTP/1.1\r\nHost: " + label(hostA) + "\r\nCookie: ;a=1;;" + ck + ";\r\n\r\n", true},
		{"quoted", "GET /p HTTP/1.1\r\nHost: " + label(hostA) + "\r\nCookie: " + CookieName + "=\"" + tokA + "\"\r\n\r\n", true},
		{"spaced name", "GET /p HTTP/1.1\r\nHost: " + label(hostA) + "\r\nCookie: x=1; " + CookieName + " =" + tokA + "\r\n\r\n", true},
		{"a bad one, then a good one", "GET /p HTTP/1.1\r\nHost: " + label(hostA) + "\r\nCookie: " + CookieName + "=nope; " + ck + "\r\n\r\n", true},
		{"another backend's, then ours", "GET /p HTTP/1.1\r\nHost: " + label(hostA) + "\r\nCookie: " + CookieName + "=" + tokB + "; " + ck + "\r\n\r\n", true},
		{"label in capitals, port, final dot", "GET /p HTTP/1.1\r\nHost: " + strings.ToUpper(label(hostA)) + ".:8443\r\nCookie: " + ck + "\r\n\r\n", true},
		{"no cookie", "GET /p HTTP/1.1\r\nHost: " + label(hostA) + "\r\n\r\n", true},
		{"HEAD, no cookie", "HEAD /p HTTP/1.1\r\nHost: " + label(hostA) + "\r\n\r\n", true},
		{"a prefix of ours only", "GET /p HTTP/1.1\r\nHost: " + label(hostA) + "\r\nCookie: " + CookieName + "X=" + tokA + "\r\n\r\n", true},
		{"another backend's cookie", "GET /p HTTP/1.1\r\nHost: " + label(hostA) + "\r\nCookie: " + CookieName + "=" + tokB + "\r\n\r\n", true},
		{"forged label", "GET /p HTTP/1.1\r\nHost: " + forged + "." + hostSuffix + "\r\nCookie: " + ck + "\r\n\r\n", true},
		{"terminated backend", "GET /p HTTP/1.1\r\nHost: " + label(hostGone) + "\r\nCookie: " + CookieName + "=" + tokGone + "\r\n\r\n", true},
		{"expired", "GET /p HTTP/1.1\r\nHost: " + label(hostA) + "\r\nCookie: " + CookieName + "=" + expired + "\r\n\r\n", true},
		{"forged token", "GET /p HTTP/1.1\r\nHost: " + label(hostA) + "\r\nCookie: " + CookieName + "=" + forgedTok + "\r\n\r\n", true},
		{"garbage", "GET /p HTTP/1.1\r\nHost: " + label(hostA) + "\r\nCookie: " + CookieName + "=a\\b; " + CookieName + "= " + tokA + "\r\n\r\n", true},
		{"a token-like first segment that is not one", "GET /" + strings.Repeat("A", 80) + "/x HTTP/1.1\r\nHost: " + label(hostA) + "\r\nCookie: " + ck + "\r\n\r\n", true},
		{"an expired token first", "GET /" + expired + "/x HTTP/1.1\r\nHost: " + label(hostA) + "\r\nCookie: " + ck + "\r\n\r\n", true},
		{"the first URL", "GET /" + tokA + "/x?y=1 HTTP/1.1\r\nHost: " + label(hostA) + "\r\n\r\n", true},
		{"the first URL, HEAD", "HEAD /" + tokA + "/ HTTP/1.1\r\nHost: " + label(hostA) + "\r\nCookie: " + CookieName + "=" + tokB + "\r\n\r\n", true},
		{"the first URL, no slash", "GET /" + tokA + "?y HTTP/1.1\r\nHost: " + label(hostA) + "\r\nConnection: close\r\n\r\n", true},
		{"the first URL, empty query", "GET /" + tokA + "/a/b? HTTP/1.1\r\nHost: " + label(hostA) + "\r\n\r\n", true},
		{"the first URL of a terminated backend", "GET /" + tokGone + "/x HTTP/1.1\r\nHost: " + label(hostGone) + "\r\n\r\n", true},
		{"another backend's first URL", "GET /" + tokB + "/x HTTP/1.1\r\nHost: " + label(hostA) + "\r\nCookie: " + ck + "\r\n\r\n", true},
		{"the first URL, odd", "GET /" + tokA + "/a/./b HTTP/1.1\r\nHost: " + label(hostA) + "\r\n\r\n", false},
		{"an odd path", "GET /a//b/./c HTTP/1.1\r\nHost: " + label(hostA) + "\r\nCookie: " + ck + "\r\n\r\n", false},
		{"a climbing path", "GET /a/../../etc HTTP/1.1\r\nHost: " + label(hostA) + "\r\nCookie: " + ck + "\r\n\r\n", false},
		{"a body", "POST /form HTTP/1.1\r\nHost: " + label(hostA) + "\r\nCookie: " + ck + "\r\nContent-Length: 2\r\n\r\nhi", false},
		{"path mode on the bare suffix", "GET /" + tokA + "/p HTTP/1.1\r\nHost: " + hostSuffix + "\r\nCookie: a=1\r\n\r\n", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			method, _, _ := strings.Cut(tt.head, " ")
			c, br := dialRaw(t, ref.Listener.Addr().String())
			io.WriteString(c, tt.head)
			wantRes, want := readResponse(t, br, method)

			h0 := handOffs.Load()
			c, br = dialRaw(t, addr)
			io.WriteString(c, tt.head)
			gotRes, got := readResponse(t, br, method)
			if fast := handOffs.Load() == h0; fast != tt.fast {
				t.Errorf("took the fast path: %v, want %v", fast, tt.fast)
			}
			if gotRes.StatusCode != wantRes.StatusCode || got != want {
				t.Errorf("fast path: %d %q\nnet/http:  %d %q", gotRes.StatusCode, got, wantRes.StatusCode, want)
			}
			for _, k := range []string{"Content-Type", "Content-Length", "Cache-Control", "Location", "Set-Cookie", "Retry-After", "X-Seen-Cookie", "Connection"} {
				if g, w := gotRes.Header.Values(k), wantRes.Header.Values(k); strings.Join(g, "\n") != strings.Join(w, "\n") {
					t.Errorf("%s: fast path %q, net/http %q", k, g, w)
				}
			}
			if strings.Contains(got, "cookies="+CookieName) || strings.Contains(got, "; "+CookieName+"=") {
				t.Errorf("the token reached the backend: %q", got)
			}
		})
	}
	// The same connection: the fast path serves one request after another.
	c, br := dialRaw(t, addr)
	h0 := handOffs.Load()
	for i := range 3 {
		io.WriteString(c, "GET /n HTTP/1.1\r\nHost: "+label(hostA)+"\r\nCookie: "+ck+"\r\n\r\n")
		if res, body := readResponse(t, br, "GET"); res.StatusCode != 200 || !strings.HasPrefix(body, "GET /n ") {
			t.Errorf("request %d: %d %q", i, res.StatusCode, body)
		}
	}
	if handOffs.Load() != h0 {
		t.Error("a keep-alive connection was handed off")
	}
}

// The fast path reads and rewrites Cookie headers as net/http's path
// does: the same token found (or the same error), the same headers left
// for the backend, and never Berth's cookie among them.
func FuzzCookieHeaders(f *testing.F) {
	signer, err := token.NewSigner(testKey)
	if err != nil {
		f.Fatal(err)
	}
	tokA := signer.Issue(hostA, "alice", now.Add(time.Hour))
	tokB := signer.Issue(hostB, "bob", now.Add(time.Hour))
	p := New(Config{Resolver: &resolver{}, Signer: signer, Now: func() time.Time { return now }})
	f.Cleanup(func() { p.Close() })
	h := p.Hosts(hostSuffix).(*hostRouter)
	f.Add("a=1; "+CookieName+"=A", "", "")
	f.Add(CookieName+"=A", CookieName+"X=A; b=2", ";;"+CookieName+"=B;")
	f.Add(" "+CookieName+" = A ", "\""+CookieName+"=A\"", CookieName+"=\"A\"")
	f.Add(CookieName+"=B; "+CookieName+"=A", "x", CookieName)
	f.Add(CookieName+"=nope;"+CookieName+"=A\t;c", "\t", "a=b;\t"+CookieName+"=\tA")
	f.Add(strings.Repeat("x;", maxCookies)+CookieName+"=A", "", "") // over net/http's limit: no cookies
	f.Fuzz(func(t *testing.T, v1, v2, v3 string) {
		var vv []string
		for _, v := range []string{v1, v2, v3} {
			v = strings.ReplaceAll(strings.ReplaceAll(v, "A", tokA), "B", tokB)
			v = strings.Trim(v, " \t") // as both servers read a header value
			if v != "" && h1.ValidHeaderValue(v) {
				vv = append(vv, v)
			}
		}
		if len(vv) == 0 {
			return
		}
		head := "GET /p HTTP/1.1\r\nHost: x\r\n"
		r := &http.Request{Header: http.Header{}}
		for _, v := range vv {
			head += "Cookie: " + v + "\r\n"
			r.Header.Add("Cookie", v)
		}
		var req request
		if !req.parse([]byte(head + "\r\n")) {
			t.Fatalf("not parsed: %q", head)
		}

		_, wantClaims, wantErr := h.cookieToken(r, hostA, now)
		var v verified
		gotClaims, gotErr := p.cookieToken(&req, hostA, &v)
		if gotClaims != wantClaims || errorBody(gotErr) != errorBody(wantErr) {
			t.Errorf("cookieToken(%q) = %+v, %v; net/http's path: %+v, %v", vv, gotClaims, gotErr, wantClaims, wantErr)
		}
		if gotErr == nil && string(req.token) != tokA {
			t.Errorf("token = %q, want A's", req.token)
		}

		dropTokenCookie(r)
		var want []string
		for _, v := range r.Header["Cookie"] {
			want = append(want, "Cookie: "+v+"\r\n")
		}
		var got []string
		for _, x := range req.Headers {
			if strings.EqualFold(string(x.Name), "Cookie") {
				var out h1.OutBuf
				writeCookieHeader(&out, x.Name, x.Value)
				if len(out.B) > 0 {
					got = append(got, string(out.B))
				}
			}
		}
		if strings.Join(got, "") != strings.Join(want, "") {
			t.Errorf("Cookie headers %q: fast path left %q, net/http's path %q", vv, got, want)
		}
		if c := r.CookiesNamed(CookieName); len(c) > 0 {
			t.Errorf("Cookie headers %q: Berth's cookie left for the backend: %q", vv, r.Header["Cookie"])
		}
	})
}

func errorBody(err error) string {
	if err == nil {
		return ""
	}
	he := asHTTPError(err)
	return fmt.Sprint(he.status, " ", string(he.body()))
}

// On the fast path as on net/http's (TestHosts_PeerGetsTokenPath), a
// backend another replica runs gets the request with the cookie's token
// back in its path, and without Berth's cookie.
func TestServer_HostRoutedToPeer(t *testing.T) {
	signer, err := token.NewSigner(testKey)
	if err != nil {
		t.Fatal(err)
	}
	p, seen := peerProxy(t, signer)
	srv := p.NewServer(ServerConfig{NoEventLoop: true, HostSuffix: hostSuffix})
	client, server := net.Pipe()
	t.Cleanup(func() { client.Close() })
	var handOffs atomic.Int32
	go srv.ServeConn(server, hostHooks{h: p.Hosts(hostSuffix), handOffs: &handOffs})

	tok := signer.Issue(peerBackend, "alice", now.Add(time.Hour))
	label, _ := signer.HostLabel(peerBackend)
	client.SetDeadline(time.Now().Add(10 * time.Second))
	go io.WriteString(client, "GET /abs/x?q=1 HTTP/1.1\r\nHost: "+label+"."+hostSuffix+"\r\nCookie: "+CookieName+"="+tok+"; app=1\r\n\r\n")
	if res, body := readResponse(t, bufio.NewReader(client), "GET"); res.StatusCode != 200 {
		t.Fatalf("via a peer: %d %s", res.StatusCode, body)
	}
	if got, want := <-seen, "/"+tok+"/abs/x?q=1 cookie=app=1 backend="; got != want {
		t.Errorf("the peer got %q, want %q", got, want)
	}
	if n := handOffs.Load(); n != 0 {
		t.Errorf("%d hand-offs: the fast path did not serve it", n)
	}
}
