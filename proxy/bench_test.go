package proxy

import (
	"github.com/berthhq/berth/proxy/internal/h1"
	"github.com/berthhq/berth/token"

	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"
	"time"
)

// BenchmarkProxy compares a GET straight to a backend with the same GET
// through the proxy's Server, one request at a time (latency) and over 32
// keep-alive connections (throughput, as wrk measures it). The difference
// between proxy and direct is what the proxy adds. "goroutines" is the
// Server with a goroutine per connection instead of its event loops (as on
// systems other than Linux). "handler" serves the
// Proxy as an http.Handler on net/http's server instead (the forwarder, as
// after a hand-off), and "reverseproxy" sends the same GET through
// httputil.ReverseProxy, to show what each layer saves. Client, proxy and backend share the CPUs, so ns/op is
// the cost of the whole exchange.
func BenchmarkProxy(b *testing.B) {
	body := []byte("hello, world\n")
	f := newFixture(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Write(body)
	}))
	direct := "http://" + f.resolver.routes["bk_1"].Addr + "/bench"
	proxied := f.server.URL + "/" + f.token("bk_1") + "/bench"
	rp := New(f.proxy.cfg)
	rp.noForwarder = true
	rpServer := httptest.NewServer(rp)
	defer rpServer.Close()
	defer rp.Close()
	handlerServer := httptest.NewServer(f.proxy)
	defer handlerServer.Close()
	viaHandlerURL := handlerServer.URL + "/" + f.token("bk_1") + "/bench"
	viaRP := rpServer.URL + "/" + f.token("bk_1") + "/bench"
	noEventLoop = true
	goroutineServer := serve(b, f.proxy)
	noEventLoop = false
	viaGoroutines := goroutineServer.URL + "/" + f.token("bk_1") + "/bench"

	client := &http.Client{Transport: &http.Transport{
		MaxIdleConnsPerHost: 64,
		DisableCompression:  true,
		IdleConnTimeout:     time.Minute,
	}}
	get := func(b *testing.B, url string) {
		res, err := client.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			b.Fatalf("status %d", res.StatusCode)
		}
	}
	for _, target := range []struct{ name, url string }{{"direct", direct}, {"proxy", proxied}, {"goroutines", viaGoroutines}, {"handler", viaHandlerURL}, {"reverseproxy", viaRP}} {
		b.Run(target.name+"/serial", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				get(b, target.url)
			}
		})
		b.Run(target.name+"/conns=32", func(b *testing.B) {
			b.ReportAllocs()
			b.SetParallelism(max(1, 32/runtime.GOMAXPROCS(0)))
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					get(b, target.url)
				}
			})
		})
	}
}

// BenchmarkRequestParse is the fast path's parse of a browser's request
// head, which every request pays: the path checks must stay cheap.
func BenchmarkRequestParse(b *testing.B) {
	for _, bm := range []struct{ name, target string }{
		{"plain", "/tok_abcdefghijklmnopqrstuvwxyz0123456789/static/js/app.4f3a9c.js?v=12"},
		{"escapes", "/tok_abcdefghijklmnopqrstuvwxyz0123456789/files/caf%C3%A9/r%C3%A9sum%C3%A9.pdf"},
	} {
		head := []byte("GET " + bm.target + " HTTP/1.1\r\nHost: berth.example.com\r\n" +
			"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n" +
			"Accept: */*\r\nAccept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\n" +
			"Connection: keep-alive\r\nReferer: http://berth.example.com/tok/\r\n\r\n")
		b.Run(bm.name, func(b *testing.B) {
			b.ReportAllocs()
			var r request
			for b.Loop() {
				if !r.parse(head) {
					b.Fatal("parse refused the head")
				}
			}
		})
	}
}

// BenchmarkAdmitAndWrite is what the fast path does with a browser's
// request head before the backend answers — parse, admit (token checked
// against the connection's cache), write the request to the backend —
// routed by path and by host (label, cookie read and cut from the Cookie
// header). Neither may allocate.
func BenchmarkAdmitAndWrite(b *testing.B) {
	signer, err := token.NewSigner(testKey)
	if err != nil {
		b.Fatal(err)
	}
	tok := signer.Issue(hostA, "alice@example.com", now.Add(time.Hour))
	label, _ := signer.HostLabel(hostA)
	p := New(Config{Resolver: &resolver{
		routes:   map[string]Route{hostA: {BackendID: hostA, Addr: "127.0.0.1:1", Secret: "s"}},
		errs:     map[string]error{},
		starting: map[string]chan struct{}{},
	}, Signer: signer, Now: func() time.Time { return now }})
	defer p.Close()
	const rest = "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n" +
		"Accept: */*\r\nAccept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\nConnection: keep-alive\r\n"
	byPath := []byte("GET /" + tok + "/static/js/app.4f3a9c.js?v=12 HTTP/1.1\r\nHost: " + hostSuffix + "\r\n" + rest + "\r\n")
	byHost := []byte("GET /static/js/app.4f3a9c.js?v=12 HTTP/1.1\r\nHost: " + label + "." + hostSuffix + "\r\n" + rest +
		"Cookie: theme=dark; " + CookieName + "=" + tok + "; _ga=GA1.1.123\r\n\r\n")
	dot := "." + hostSuffix
	for _, bm := range []struct {
		name string
		head []byte
	}{{"path", byPath}, {"host", byHost}} {
		b.Run(bm.name, func(b *testing.B) {
			var (
				r  request
				v  verified
				hb hostBackend
				fw forward
				wr h1.OutBuf
			)
			b.ReportAllocs()
			for b.Loop() {
				if !r.parseRouted(bm.head, dot) {
					b.Fatal("parse refused the head")
				}
				var err error
				if r.label != nil {
					_, err = p.admitHost(&r, &hb, &v, &fw)
				} else {
					_, err = p.admit(&r, &v, &fw)
				}
				if err != nil {
					b.Fatal(err)
				}
				wr.B = wr.B[:0]
				writeFastRequest(&wr, &r, &fw, "203.0.113.9", true)
			}
		})
	}
}
