package proxy

import (
	"net"
	"net/http"
	"sync"
	"time"
)

// Connection pooling toward backends, for both the forwarder and the
// transport: many idle keep-alive connections per backend, so steady
// traffic never dials.
const (
	maxIdlePerBackend = 1024
	idleConnTimeout   = 90 * time.Second
)

func newDialer() *net.Dialer {
	return &net.Dialer{
		// Backends are ready when routed to; a slow dial means a dead host.
		Timeout:   3 * time.Second,
		KeepAlive: 30 * time.Second,
	}
}

// newTransport returns the transport for requests the forwarder does not
// take: HTTP/1.1, and no compression, so bodies pass through untouched.
func newTransport(d *net.Dialer) *http.Transport {
	return &http.Transport{
		DialContext:           d.DialContext,
		MaxIdleConnsPerHost:   maxIdlePerBackend,
		IdleConnTimeout:       idleConnTimeout,
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
