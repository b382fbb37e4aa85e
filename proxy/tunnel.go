package proxy

import (
	"github.com/berthhq/berth/proxy/internal/rawio"

	"net"
	"sync/atomic"
	"syscall"

	"bufio"
	"fmt"
	"golang.org/x/sys/unix"
	"io"
	"net/http"
	"net/http/httputil"
	"strings"
)

// isUpgrade reports a request to switch protocols (WebSocket).
func isUpgrade(r *http.Request) bool {
	return r.Header.Get("Upgrade") != "" && headerHasToken(r.Header["Connection"], "upgrade")
}

func headerHasToken(values []string, token string) bool {
	for _, v := range values {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// hopHeaders are the hop-by-hop headers a proxy must not forward.
var hopHeaders = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// tunnel proxies an upgrade (WebSocket) on a backend connection of its own.
// Once the backend switches protocols it hands both raw connections to two
// goroutines (see pipe) and returns handedOff; done is called when both
// directions have ended. ReverseProxy's upgrade path instead holds two
// 32 KiB buffers, a transport connection and the handler per socket.
func (p *Proxy) tunnel(w http.ResponseWriter, r *http.Request, f *forward, done func()) (handedOff bool, err error) {
	out := r.Clone(r.Context())
	upgrade := r.Header.Get("Upgrade")
	for _, h := range hopHeaders {
		out.Header.Del(h)
	}
	for _, h := range []string{"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Forwarded"} {
		out.Header.Del(h)
	}
	p.rewrite(&httputil.ProxyRequest{In: r.WithContext(contextWith(r, f)), Out: out})
	out.Header.Set("Connection", "Upgrade")
	out.Header.Set("Upgrade", upgrade)
	if _, ok := out.Header["User-Agent"]; !ok {
		out.Header["User-Agent"] = nil // do not invent one
	}

	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed {
		return false, &httpError{status: http.StatusServiceUnavailable, code: "unavailable", msg: "berth is shutting down", err: errClosed, backend: f.claims.BackendID}
	}
	backend, err := p.fwd.dialer.DialContext(r.Context(), "tcp", f.route.Addr)
	if err != nil {
		return false, badGateway(f, err)
	}
	closeBackend := true
	defer func() {
		if closeBackend {
			backend.Close()
		}
	}()
	if err := out.Write(backend); err != nil {
		return false, badGateway(f, err)
	}
	br := bufio.NewReaderSize(backend, 2048)
	resp, err := http.ReadResponse(br, out)
	if err != nil {
		return false, badGateway(f, err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		// The backend declined the upgrade: relay its answer as is.
		defer resp.Body.Close()
		for _, h := range hopHeaders {
			resp.Header.Del(h)
		}
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		buf := p.buffers.Get()
		io.CopyBuffer(w, resp.Body, buf)
		p.buffers.Put(buf)
		return false, nil
	}

	client, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return false, badGateway(f, fmt.Errorf("hijack: %w", err))
	}
	// The 101 head, then whatever either side sent early, from the buffers
	// that held it; after that the buffers are dropped.
	fmt.Fprintf(brw, "HTTP/1.1 101 %s\r\n", http.StatusText(http.StatusSwitchingProtocols))
	resp.Header.Write(brw)
	brw.WriteString("\r\n")
	if n := br.Buffered(); n > 0 {
		b, _ := br.Peek(n)
		brw.Write(b)
	}
	if err := brw.Flush(); err != nil {
		client.Close()
		return false, nil
	}
	if n := brw.Reader.Buffered(); n > 0 {
		b, _ := brw.Reader.Peek(n)
		if _, err := backend.Write(b); err != nil {
			client.Close()
			return false, nil
		}
	}

	c := &upgradedConn{ReadWriteCloser: backend, p: p}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		client.Close()
		return false, nil
	}
	p.upgraded[c] = struct{}{}
	p.tunnels.Add(2)
	p.mu.Unlock()
	closeBackend = false

	// Hand both directions to goroutines of their own and return, so the
	// HTTP server lets go of this connection's request state; done ends
	// the backend's activity once both directions have finished.
	var left atomic.Int32
	left.Store(2)
	end := func() {
		c.Close()
		client.Close()
		if left.Add(-1) == 0 && done != nil {
			done()
		}
		p.tunnels.Done()
	}
	go func() { defer end(); p.pipe(backend, client) }()
	go func() { defer end(); p.pipe(client, backend) }()
	return true, nil
}

// pipe copies src to dst until either side fails. While src is idle it
// holds no buffer: it reads the socket itself, borrowing a pooled buffer
// for each attempt, so an idle WebSocket costs two parked goroutines and
// its two sockets, and a message costs one read and one write (plus the
// read that finds nothing and parks), as a plain copy loop would. Both are
// raw system calls, for the reason rawConn gives.
func (p *Proxy) pipe(dst, src net.Conn) {
	sc, ok := src.(syscall.Conn)
	var rc syscall.RawConn
	if ok {
		rc, _ = sc.SyscallConn()
	}
	if rc == nil {
		buf := p.buffers.Get()
		io.CopyBuffer(dst, src, buf)
		p.buffers.Put(buf)
		return
	}
	// Read straight from the socket into a buffer borrowed for the
	// attempt: on EAGAIN the buffer goes back and the goroutine waits for
	// readability holding nothing; on data it is written out and returned.
	var (
		buf  []byte
		n    int
		rerr error
	)
	read := func(fd uintptr) bool {
		buf = p.buffers.Get()
		for {
			var e syscall.Errno
			n, e = rawio.Read(fd, buf)
			rerr = nil
			if e != 0 {
				rerr = e
			}
			if e != unix.EINTR {
				break
			}
		}
		if rerr == unix.EAGAIN {
			p.buffers.Put(buf)
			buf = nil
			return false
		}
		if rerr != nil {
			n = 0
		}
		return true
	}
	dst = newRawConn(dst)
	for {
		if err := rc.Read(read); err != nil {
			if buf != nil {
				p.buffers.Put(buf)
			}
			return
		}
		var werr error
		if n > 0 {
			_, werr = dst.Write(buf[:n])
		}
		p.buffers.Put(buf)
		buf = nil
		if rerr != nil || n == 0 || werr != nil {
			return // error, EOF or the other side failed
		}
	}
}

func badGateway(f *forward, err error) error {
	return &httpError{status: http.StatusBadGateway, code: "unavailable", msg: "backend unavailable", err: err, backend: f.claims.BackendID}
}
