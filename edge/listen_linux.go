package edge

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

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
