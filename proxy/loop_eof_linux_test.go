//go:build linux

package proxy

import (
	"bytes"
	"io"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
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
	c.SetDeadline(time.Now().Add(30 * time.Second))
	io.WriteString(c, "GET /"+f.token("bk_1")+"/eof HTTP/1.1\r\nHost: x\r\n\r\n")
	res, err := http.ReadResponse(br, &http.Request{Method: "GET"})
	if err != nil {
		t.Fatal(err)
	}
	if n := settle(t, &written); n >= bigBody {
		t.Fatalf("backend wrote all %d", n)
	}
	got, want := make([]byte, 64<<10), make([]byte, 64<<10)
	n := 0
	for {
		k, err := io.ReadFull(res.Body, got)
		pattern(n, want[:k])
		if !bytes.Equal(got[:k], want[:k]) {
			t.Fatalf("differs after %d", n)
		}
		n += k
		if err != nil {
			break
		}
	}
	if n != bigBody {
		t.Fatalf("read %d", n)
	}
}
