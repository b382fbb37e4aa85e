package edge

import (
	"context"
	"net"
	"time"
)

// The TCP keep-alive the edge's client connections get: Go's defaults for
// an accepted connection (net.KeepAliveConfig).
const (
	keepAliveIdle     = 15 * time.Second
	keepAliveInterval = 15 * time.Second
	keepAliveCount    = 9
)

// Listen opens a TCP listener for Serve or ServeHTTP on addr. Its
// connections get TCP keep-alive as net.Listen's do; on Linux they inherit
// it from the listening socket instead of four setsockopt calls each at
// Accept, a few µs of a TLS handshake's server CPU.
func Listen(ctx context.Context, addr string) (net.Listener, error) {
	return listenConfig().Listen(ctx, "tcp", addr)
}
