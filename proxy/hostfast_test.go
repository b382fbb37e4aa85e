package proxy

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

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
		{"a token-like first segment that is not one", "GET /" + strings.Repeat("A", 80) + "/x HTTP/1.1\r\nHost: " + label(hostA) + "\r\nCookie: " + ck + "\r\n\r\n", false},
		{"the first URL", "GET /" + tokA + "/x?y=1 HTTP/1.1\r\nHost: " + label(hostA) + "\r\n\r\n", false},
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
			c, br = dialRaw(t, ln.Addr().String())
			io.WriteString(c, tt.head)
			gotRes, got := readResponse(t, br, method)
			if fast := handOffs.Load() == h0; fast != tt.fast {
				t.Errorf("took the fast path: %v, want %v", fast, tt.fast)
			}
			if gotRes.StatusCode != wantRes.StatusCode || got != want {
				t.Errorf("fast path: %d %q\nnet/http:  %d %q", gotRes.StatusCode, got, wantRes.StatusCode, want)
			}
			for _, k := range []string{"Content-Type", "Cache-Control", "Location", "Set-Cookie", "Retry-After", "X-Seen-Cookie"} {
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
	c, br := dialRaw(t, ln.Addr().String())
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
