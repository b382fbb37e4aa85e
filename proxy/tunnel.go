package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync"
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

// tunnel proxies an upgrade (WebSocket) on a connection of its own. Once the
// backend switches protocols, both sides are raw TCP connections and the
// bytes move by splice(2) inside the kernel: an idle WebSocket costs Berth
// two parked goroutines and no copy buffers — ReverseProxy's upgrade path
// holds two 32 KiB buffers and a pooled transport connection per socket.
// It returns once either side closes.
func (p *Proxy) tunnel(w http.ResponseWriter, r *http.Request, f *forward) error {
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
		return &httpError{status: http.StatusServiceUnavailable, code: "unavailable", msg: "berth is shutting down", err: errClosed, backend: f.claims.BackendID}
	}
	backend, err := p.fwd.dialer.DialContext(r.Context(), "tcp", f.route.Addr)
	if err != nil {
		return badGateway(f, err)
	}
	closeBackend := true
	defer func() {
		if closeBackend {
			backend.Close()
		}
	}()
	if err := out.Write(backend); err != nil {
		return badGateway(f, err)
	}
	br := bufio.NewReaderSize(backend, 2048)
	resp, err := http.ReadResponse(br, out)
	if err != nil {
		return badGateway(f, err)
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
		return nil
	}

	client, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return badGateway(f, fmt.Errorf("hijack: %w", err))
	}
	defer client.Close()
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
		return nil
	}
	if n := brw.Reader.Buffered(); n > 0 {
		b, _ := brw.Reader.Peek(n)
		if _, err := backend.Write(b); err != nil {
			return nil
		}
	}

	c := &upgradedConn{ReadWriteCloser: backend, p: p}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.upgraded[c] = struct{}{}
	p.mu.Unlock()
	closeBackend = false
	defer c.Close()

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		p.pipe(backend, client)
		// The client is done sending: end both directions.
		c.Close()
		client.Close()
	}()
	p.pipe(client, backend)
	c.Close()
	client.Close()
	wg.Wait()
	return nil
}

// pipe copies src to dst; between TCP connections io.Copy splices, and the
// pooled buffer is only touched when it cannot.
func (p *Proxy) pipe(dst io.Writer, src io.Reader) {
	if rf, ok := dst.(io.ReaderFrom); ok {
		rf.ReadFrom(src)
		return
	}
	buf := p.buffers.Get()
	io.CopyBuffer(dst, src, buf)
	p.buffers.Put(buf)
}

func badGateway(f *forward, err error) error {
	return &httpError{status: http.StatusBadGateway, code: "unavailable", msg: "backend unavailable", err: err, backend: f.claims.BackendID}
}
