package h1

import (
	"bufio"
	"bytes"
	"golang.org/x/net/http/httpguts"
	"net/http"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	var r Request
	if !r.Parse([]byte("HEAD /a//b?c HTTP/1.1\r\nHost: x:80\r\nConnection: keep-alive, close\r\nTe: trailers\r\nX-A:  b \r\n\r\n")) {
		t.Fatal("refused a plain HEAD")
	}
	if !r.Head || string(r.Target) != "/a//b?c" || !r.OddPath || string(r.Host) != "x:80" || !r.Close || !r.TETrailers ||
		len(r.Headers) != 4 || string(r.Headers[3].Value) != "b" {
		t.Fatalf("parsed %+v", r)
	}
	for _, head := range []string{
		"POST / HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET / HTTP/1.0\r\nHost: x\r\n\r\n",
		"GET /%zz HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /a#b HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET / HTTP/1.1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n",
		"GET / HTTP/1.1\nHost: x\n\n",
		"GET / HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n",
	} {
		if r.Parse([]byte(head)) {
			t.Errorf("%q: parsed, want it left to net/http", head)
		}
	}
}

// FuzzParseRequest checks the parser against net/http's: a head it
// accepts, net/http accepts too, with the same method, target and host,
// and no body.
func FuzzParseRequest(f *testing.F) {
	f.Add([]byte("GET /tok/a?b=c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
	f.Add([]byte("HEAD /tok/ HTTP/1.1\r\nHost: x:80\r\nContent-Length: 0\r\nTe: trailers\r\n\r\n"))
	f.Add([]byte("GET /tok HTTP/1.1\r\nhost: x\r\nX-A:  b \r\n\r\n"))
	f.Add([]byte("GET /t%2fk/ HTTP/1.1\r\nHost: x\r\n\r\n"))
	f.Add([]byte("GET /tok/a/%2e%2E/b//c HTTP/1.1\r\nHost: x\r\n\r\n"))
	f.Fuzz(func(t *testing.T, head []byte) {
		end := IndexHeadEnd(head, 0)
		if end < 0 {
			return
		}
		head = head[:end]
		var r Request
		if !r.Parse(head) {
			return
		}
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head)))
		if err != nil {
			t.Fatalf("Parse accepted %q; net/http refused it: %v", head, err)
		}
		if req.Method != string(r.Method) || req.RequestURI != string(r.Target) || req.Host != string(r.Host) ||
			req.ContentLength != 0 || req.Close != r.Close {
			t.Fatalf("%q: net/http read %s %s host %q length %d close %v; Parse %s %s host %q close %v",
				head, req.Method, req.RequestURI, req.Host, req.ContentLength, req.Close, r.Method, r.Target, r.Host, r.Close)
		}
	})
}

func TestValidHost(t *testing.T) {
	long := strings.Repeat("abcdefghij", 7) // 70 bytes: pieces of 32
	for c := 0; c < 256; c++ {
		for _, at := range []int{0, 31, 32, 69} {
			h := []byte(long)
			h[at] = byte(c)
			if got, want := validHost(h), httpguts.ValidHostHeader(string(h)); got != want {
				t.Errorf("validHost with %q at %d = %v, want %v", byte(c), at, got, want)
			}
		}
	}
	if !validHost(nil) || !validHost([]byte("[::1]:8443")) {
		t.Error("validHost refused a valid host")
	}
}
