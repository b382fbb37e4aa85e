//go:build linux

package proxy

import (
	"net/http"
	"sync/atomic"
	"testing"
)

// A response without length, read to the backend's EOF, pauses while the
// client does not read and resumes, whole, when it does.
func TestLoop_BackpressureToEOF(t *testing.T) {
	var written atomic.Int64
	f := newFixture(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hj, bw, _ := w.(http.Hijacker).Hijack()
		defer hj.Close()
		bw.WriteString("HTTP/1.1 200 OK\r\n\r\n")
		bw.Flush()
		buf := make([]byte, 32<<10)
		for n := 0; n < bigBody; n += len(buf) {
			pattern(n, buf)
			if _, err := hj.Write(buf); err != nil {
				return
			}
			written.Add(int64(len(buf)))
		}
	}))
	c, br := f.rawConn(t)
	stalledRead(t, f, c, br, "/eof", &written)
}
