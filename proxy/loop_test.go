package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// Tests of what the Server's event loop (Linux) does on its own, which
// TestGoroutineServer runs on the goroutine per connection too.

// bigBody is the body the backpressure tests relay: more than the
// kernel's socket buffers along the way hold.
const bigBody = 64 << 20

// pattern fills a body so that a byte out of place shows.
func pattern(off int, b []byte) {
	for i := range b {
		b[i] = byte((off + i) % 251)
	}
}

// bigBackend writes bigBody bytes (with a length, or chunked) and then
// sends the error its writes ended with, if any, to finished.
func bigBackend(written *atomic.Int64, finished chan<- error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/length" {
			w.Header().Set("Content-Length", strconv.Itoa(bigBody))
		}
		buf := make([]byte, 32<<10)
		var err error
		for n := 0; n < bigBody && err == nil; n += len(buf) {
			pattern(n, buf)
			_, err = w.Write(buf)
			written.Add(int64(len(buf)))
			if r.URL.Path == "/chunked" {
				w.(http.Flusher).Flush()
			}
		}
		finished <- err
	})
}

// settle waits until the backend has stopped writing, and returns how
// much it wrote.
// stalledRead asks for a big patterned body at path, checks that the
// backend stops writing while the client reads nothing, then reads the body
// and checks it whole.
func stalledRead(t *testing.T, f *fixture, c net.Conn, br *bufio.Reader, path string, written *atomic.Int64) {
	t.Helper()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	io.WriteString(c, "GET /"+f.token("bk_1")+path+" HTTP/1.1\r\nHost: x\r\n\r\n")
	res, err := http.ReadResponse(br, &http.Request{Method: "GET"})
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if n := settle(t, written); n >= bigBody {
		t.Fatalf("the backend wrote all %d bytes to a client that read none", n)
	}
	got, want := make([]byte, 64<<10), make([]byte, 64<<10)
	n := 0
	for {
		k, err := io.ReadFull(res.Body, got)
		pattern(n, want[:k])
		if !bytes.Equal(got[:k], want[:k]) {
			t.Fatalf("body differs after byte %d", n)
		}
		n += k
		if err != nil {
			break
		}
	}
	if n != bigBody {
		t.Fatalf("read %d body bytes, want %d", n, bigBody)
	}
}

func settle(t *testing.T, written *atomic.Int64) int64 {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	prev := int64(-1)
	for n := written.Load(); n != prev; n = written.Load() {
		if time.Now().After(deadline) {
			t.Fatal("the backend never stopped writing")
		}
		prev = n
		time.Sleep(100 * time.Millisecond)
	}
	return prev
}

// A client that does not read stops the backend's writes, rather than
// the proxy buffering the response; when it reads again it gets all of
// it.
func TestServer_Backpressure(t *testing.T) {
	var written atomic.Int64
	finished := make(chan error, 1)
	f := newFixture(t, bigBackend(&written, finished))
	for _, path := range []string{"/length", "/chunked"} {
		t.Run(path[1:], func(t *testing.T) {
			written.Store(0)
			c, br := f.rawConn(t)
			stalledRead(t, f, c, br, path, &written)
			if err := <-finished; err != nil {
				t.Fatalf("backend: %v", err)
			}
			// The connection still serves.
			io.WriteString(c, "GET /"+f.token("bk_1")+" HTTP/1.1\r\nHost: x\r\n\r\n")
			if res, _ := readResponse(t, br, "GET"); res.StatusCode != http.StatusPermanentRedirect {
				t.Fatalf("next request: %d", res.StatusCode)
			}
		})
	}
}

// A client that leaves in the middle of a response, while the proxy
// waits for it to read, ends the backend's request.
func TestServer_ClientLeavesMidResponse(t *testing.T) {
	var written atomic.Int64
	finished := make(chan error, 1)
	f := newFixture(t, bigBackend(&written, finished))
	for _, path := range []string{"/length", "/chunked"} {
		t.Run(path[1:], func(t *testing.T) {
			c, br := f.rawConn(t)
			io.WriteString(c, "GET /"+f.token("bk_1")+path+" HTTP/1.1\r\nHost: x\r\n\r\n")
			if _, err := http.ReadResponse(br, &http.Request{Method: "GET"}); err != nil {
				t.Fatal(err)
			}
			settle(t, &written)
			c.Close()
			select {
			case err := <-finished:
				if err == nil {
					t.Fatal("the backend wrote the whole body to a client that left")
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the backend's request went on after the client left")
			}
		})
	}
	waitFor(t, "balanced Begin/End", func() bool { return f.activity.begins.Load() == f.activity.ends.Load() })
}

// A client that shuts down its side of the connection after its request
// has gone, as far as a long request is concerned.
func TestServer_ClientHalfClose(t *testing.T) {
	cancelled := make(chan struct{})
	f := newFixture(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
		close(cancelled)
	}))
	c, _ := f.rawConn(t)
	io.WriteString(c, "GET /"+f.token("bk_1")+"/poll HTTP/1.1\r\nHost: x\r\n\r\n")
	waitFor(t, "the request to begin", func() bool { return f.activity.begins.Load() == 1 })
	c.(*net.TCPConn).CloseWrite()
	select {
	case <-cancelled:
	case <-time.After(10 * time.Second):
		t.Fatal("the backend's request went on after the client left")
	}
	waitFor(t, "End", func() bool { return f.activity.ends.Load() == 1 })
}

// Requests sent together are answered in order, whatever answers them:
// the backend, the proxy itself (a redirect, a bad token), or net/http
// after a hand-off.
func TestServer_Pipelining(t *testing.T) {
	f := newFixture(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		io.WriteString(w, r.Method+" "+r.RequestURI+" "+string(b))
	}))
	tok := f.token("bk_1")
	req := func(method, target string) string {
		return method + " " + target + " HTTP/1.1\r\nHost: x\r\n\r\n"
	}
	var all strings.Builder
	type answer struct {
		method string
		status int
		body   string
	}
	var want []answer
	for i := range 20 {
		path := "/" + tok + "/" + strconv.Itoa(i)
		switch i % 5 {
		case 1:
			all.WriteString(req("HEAD", path))
			want = append(want, answer{"HEAD", 200, ""})
		case 2:
			all.WriteString(req("GET", "/"+tok))
			want = append(want, answer{"GET", 308, ""})
		case 3:
			all.WriteString(req("GET", "/bad/"+strconv.Itoa(i)))
			want = append(want, answer{"GET", 401, ""})
		default:
			all.WriteString(req("GET", path))
			want = append(want, answer{"GET", 200, "GET /" + strconv.Itoa(i) + " "})
		}
	}
	all.WriteString("POST /" + tok + "/post HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody")
	want = append(want, answer{"POST", 200, "POST /post body"})
	all.WriteString(req("GET", "/"+tok+"/last"))
	want = append(want, answer{"GET", 200, "GET /last "})

	c, br := f.rawConn(t)
	io.WriteString(c, all.String())
	for i, w := range want {
		res, body := readResponse(t, br, w.method)
		if res.StatusCode != w.status || (w.status == 200 && body != w.body) {
			t.Fatalf("response %d: %d %q, want %d %q", i, res.StatusCode, body, w.status, w.body)
		}
	}
}

// A request for a backend that is starting goes, with the bytes behind
// it, to where it can wait.
func TestServer_HandOffToWait(t *testing.T) {
	f := newFixture(t, http.HandlerFunc(echoURI))
	ready := f.starting("bk_1")
	tok := f.token("bk_1")
	c, br := f.rawConn(t)
	io.WriteString(c, "GET /"+tok+"/first HTTP/1.1\r\nHost: x\r\n\r\nGET /"+tok+"/second HTTP/1.1\r\nHost: x\r\n\r\n")
	waitFor(t, "the request to wait for the backend", func() bool { return f.resolver.calls.Load() > 0 })
	close(ready)
	for _, want := range []string{"/first", "/second"} {
		if res, body := readResponse(t, br, "GET"); res.StatusCode != 200 || body != want {
			t.Fatalf("got %d %q, want 200 %q", res.StatusCode, body, want)
		}
	}
}

// A Shutdown whose context ends closes the connections still busy.
func TestServer_ShutdownTimeout(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	f := newFixture(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
	}))
	srv, addr, served := f.ownServer(t, ServerConfig{NoEventLoop: noEventLoop})
	c, _ := dialRaw(t, addr)
	io.WriteString(c, "GET /"+f.token("bk_1")+"/slow HTTP/1.1\r\nHost: x\r\n\r\n")
	waitFor(t, "the request to begin", func() bool { return f.activity.begins.Load() == 1 })

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := srv.Shutdown(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Shutdown: %v, want context.Canceled", err)
	}
	if b, err := io.ReadAll(bufio.NewReader(c)); err != nil || len(b) > 0 {
		t.Fatalf("busy connection after Shutdown: read %q, %v; want it closed", b, err)
	}
	if err := <-served; err != http.ErrServerClosed {
		t.Fatalf("Serve: %v", err)
	}
}

// TestGoroutineServer runs the tests of the Server and of the proxy's
// behaviour with a goroutine per connection, as on systems other than
// Linux.
func TestGoroutineServer(t *testing.T) {
	noEventLoop = true
	defer func() { noEventLoop = false }()
	tests := behaviourTests()
	for name, test := range map[string]func(*testing.T){
		"HandOff": TestServer_HandOff, "ResponseFraming": TestServer_ResponseFraming,
		"ConnectionClose": TestServer_ConnectionClose, "IdleTimeout": TestServer_IdleTimeout,
		"Shutdown": TestServer_Shutdown, "Backpressure": TestServer_Backpressure,
		"ClientLeavesMidResponse": TestServer_ClientLeavesMidResponse, "Pipelining": TestServer_Pipelining,
		"HandOffToWait": TestServer_HandOffToWait, "ShutdownTimeout": TestServer_ShutdownTimeout,
		"ClientHalfClose": TestServer_ClientHalfClose,
	} {
		tests[name] = test
	}
	for name, test := range tests {
		t.Run(name, test)
	}
}
