//go:build !linux

package evloop

import (
	"errors"
	"net"
)

// Group is the Linux event loops; elsewhere every connection has a
// goroutine of the proxy's own.
type Group struct{}

func Start(Config) (*Group, error) { return nil, errors.New("event loops need Linux") }

func CanDial(string) bool                         { return false }
func (*Group) Adopt(net.Conn) bool                { return false }
func (*Group) AdoptBackend(string, net.Conn) bool { return false }
func (*Group) Shutdown()                          {}
func (*Group) Abort()                             {}
func (*Group) Wait()                              {}
