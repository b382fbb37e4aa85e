package edge

import (
	"crypto/tls"
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
func BenchmarkServer_TLSHandshake(b *testing.B) {
	f := startH1Edge(b, Config{})
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
