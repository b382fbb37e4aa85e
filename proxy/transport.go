package proxy

import (
	"net"
	"net/http"
	"sync"
	"time"
)

// newTransport returns the transport shared by every backend: HTTP/1.1 with
// many idle keep-alive connections per backend, so steady traffic never
// dials, and no compression, so bodies pass through untouched.
func newTransport() *http.Transport {
	return &http.Transport{
		DialContext: (&net.Dialer{
			// Backends are ready when routed to; a slow dial means a dead host.
			Timeout:   3 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		MaxIdleConnsPerHost:   1024,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
		WriteBufferSize:       16 << 10,
		ReadBufferSize:        16 << 10,
	}
}

// bufferPool lends ReverseProxy 32 KiB copy buffers. It pools array
// pointers rather than slices so that Put does not allocate.
type bufferPool struct{ pool sync.Pool }

const bufferSize = 32 << 10

func (p *bufferPool) Get() []byte {
	if b, ok := p.pool.Get().(*[bufferSize]byte); ok {
		return b[:]
	}
	return make([]byte, bufferSize)
}

func (p *bufferPool) Put(b []byte) {
	if cap(b) == bufferSize {
		p.pool.Put((*[bufferSize]byte)(b[:bufferSize]))
	}
}
