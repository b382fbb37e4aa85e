//go:build !linux

package proxy

import "net"

// loopGroup is the Linux event loops; elsewhere every connection has a
// goroutine of its own.
type loopGroup struct{}

func startLoops(*Server) *loopGroup { return nil }

func (*loopGroup) adopt(net.Conn) bool { return false }
func loopCanDial(string) bool          { return false }
func (*loopGroup) wake()               {}
func (*loopGroup) abort()              {}
