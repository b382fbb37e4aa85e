package proxy

import "golang.org/x/sys/unix"

// peerHungUp reports whether the peer of the socket fd has shut down its
// side (a FIN received), even with bytes still unread before it.
func peerHungUp(fd uintptr) bool {
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
	n, err := unix.Poll(pfd, 0)
	return err == nil && n > 0 && pfd[0].Revents&(unix.POLLRDHUP|unix.POLLHUP|unix.POLLERR) != 0
}
