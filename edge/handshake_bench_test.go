package edge

import (
	"context"
	"crypto/tls"
	"net"
	"sync"
	"testing"
)

// BenchmarkServer_TLSHandshake is berth bench's handshake row in one
// process: full TLS 1.3 handshakes (X25519, ECDSA P-256, no resumption)
// from 4 concurrent clients against the edge with its HTTP/1.1 path,
// each connection closed once its handshake is done. The client's work
// is the same in every build, so allocs/op and a CPU profile focused on
// the server (-cpuprofile, then pprof -focus 'edge|tls.\(\*Conn\).serverHandshake')
// show what the edge adds to crypto/tls's own.
//
// Its two sub-benchmarks differ only in the listener: net.Listen's, and
// Listen's (TCP_DEFER_ACCEPT and keep-alive set on the listening socket),
// which berth serve uses; run them in one command to compare.
func BenchmarkServer_TLSHandshake(b *testing.B) {
	for _, l := range []struct {
		name   string
		listen func() (net.Listener, error)
	}{
		{"listen=net", func() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }},
		{"listen=edge", func() (net.Listener, error) { return Listen(context.Background(), "127.0.0.1:0") }},
	} {
		b.Run(l.name, func(b *testing.B) { benchHandshakes(b, l.listen) })
	}
}

func benchHandshakes(b *testing.B, listen func() (net.Listener, error)) {
	f := startH1EdgeOn(b, Config{}, listen)
	cfg := f.ca.clientTLS("edge.test")
	cfg.CurvePreferences = []tls.CurveID{tls.X25519}
	cfg.NextProtos = []string{"http/1.1"}
	const clients = 4
	work := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range work {
				c, err := tls.Dial("tcp", f.addr, cfg)
				if err != nil {
					select {
					case errs <- err:
					default:
					}
					continue
				}
				c.Close()
			}
		}()
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		work <- struct{}{}
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
}
