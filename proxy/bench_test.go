package proxy

import (
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
