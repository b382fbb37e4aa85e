package edge

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// deferAccept is TCP_DEFER_ACCEPT on the listening socket: Accept returns
// a connection once its first bytes (a ClientHello, a request head, a
// PROXY header: the client always speaks first here) have arrived, so the
// handshake's first read finds them instead of parking the goroutine in
// the netpoller for them, one wake-up less per connection. A client that
// sends nothing is accepted anyway after about this long (Linux then
// takes the next bare ACK), and the handshake deadline applies from then.
const deferAccept = 5 // seconds

func listenConfig() *net.ListenConfig {
	return &net.ListenConfig{
		KeepAlive: -1, // set once below, not per accepted connection
		Control: func(_, _ string, c syscall.RawConn) error {
			var err error
			cerr := c.Control(func(fd uintptr) {
				for _, o := range [...]struct{ level, opt, v int }{
					{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
					{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, int(keepAliveIdle.Seconds())},
					{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, int(keepAliveInterval.Seconds())},
					{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, keepAliveCount},
					{unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, deferAccept},
				} {
					if err = unix.SetsockoptInt(int(fd), o.level, o.opt, o.v); err != nil {
						return
					}
				}
			})
			if cerr != nil {
				return cerr
			}
			return err
		},
	}
}
