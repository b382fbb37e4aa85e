//go:build race

package rawio

import "syscall"

// Under the race detector, Read and Write go through package
// syscall, whose Read and Write tell the detector that a write happens
// before the read that sees its bytes; raw system calls would not, and
// the detector would report races between the two ends of a connection.
func Read(fd uintptr, b []byte) (int, syscall.Errno) {
	n, err := syscall.Read(int(fd), b)
	return errno(n, err)
}

func Write(fd uintptr, b []byte) (int, syscall.Errno) {
	n, err := syscall.Write(int(fd), b)
	return errno(n, err)
}

func errno(n int, err error) (int, syscall.Errno) {
	if err != nil {
		return 0, err.(syscall.Errno)
	}
	return n, 0
}
