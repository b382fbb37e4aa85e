package edge

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
)

// The PROXY protocol (HAProxy's, versions 1 and 2) carries the client's
// address from an L4 balancer: one header before the connection's first
// byte. Only the addresses are read; v2's TLVs are skipped.

var (
	v2Sig = []byte("\r\n\r\n\x00\r\nQUIT\n")
	v1Sig = []byte("PROXY ")

	errNoProxyHeader = errors.New("proxy protocol: connection does not start with a PROXY header")
)

const (
	v1MaxLen = 107 // the spec's longest v1 line, CRLF included
	// v2MaxLen bounds what a v2 header may declare: addresses and TLVs;
	// balancers send a few hundred bytes at most.
	v2MaxLen = 4096
)

// readProxyHeader reads a PROXY header from br and returns the client's
// address it names, or the zero AddrPort for a header that names none
// (v1 UNKNOWN, v2 LOCAL: a balancer's own health check).
func readProxyHeader(br *bufio.Reader) (netip.AddrPort, error) {
	b, err := br.Peek(len(v2Sig))
	if err != nil {
		if len(b) > 0 && bytes.HasPrefix(v2Sig, b) || bytes.HasPrefix(v1Sig, b) || bytes.HasPrefix(b, v1Sig) {
			return netip.AddrPort{}, fmt.Errorf("proxy protocol: short header: %w", err)
		}
		return netip.AddrPort{}, errNoProxyHeader
	}
	switch {
	case bytes.Equal(b, v2Sig):
		return readV2(br)
	case bytes.HasPrefix(b, v1Sig):
		return readV1(br)
	}
	return netip.AddrPort{}, errNoProxyHeader
}

func readV1(br *bufio.Reader) (netip.AddrPort, error) {
	var line []byte
	for {
		c, err := br.ReadByte()
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("proxy protocol v1: %w", err)
		}
		line = append(line, c)
		if c == '\n' {
			break
		}
		if len(line) >= v1MaxLen {
			return netip.AddrPort{}, errors.New("proxy protocol v1: header too long")
		}
	}
	if len(line) < 2 || line[len(line)-2] != '\r' {
		return netip.AddrPort{}, errors.New("proxy protocol v1: header does not end with CRLF")
	}
	f := bytes.Split(line[:len(line)-2], []byte(" "))
	if len(f) >= 2 && string(f[1]) == "UNKNOWN" {
		return netip.AddrPort{}, nil // the rest of the line is to be ignored
	}
	if len(f) != 6 || (string(f[1]) != "TCP4" && string(f[1]) != "TCP6") {
		return netip.AddrPort{}, fmt.Errorf("proxy protocol v1: malformed header %q", line)
	}
	src, err := netip.ParseAddr(string(f[2]))
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("proxy protocol v1: source address: %w", err)
	}
	if _, err := netip.ParseAddr(string(f[3])); err != nil {
		return netip.AddrPort{}, fmt.Errorf("proxy protocol v1: destination address: %w", err)
	}
	if src.Is4() != (string(f[1]) == "TCP4") {
		return netip.AddrPort{}, fmt.Errorf("proxy protocol v1: %s address %s", f[1], src)
	}
	sport, err := parsePort(f[4])
	if err != nil {
		return netip.AddrPort{}, err
	}
	if _, err := parsePort(f[5]); err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(src, sport), nil
}

func parsePort(b []byte) (uint16, error) {
	// No sign, no leading zeros (except "0" itself), as the spec says.
	if len(b) == 0 || len(b) > 5 || (len(b) > 1 && b[0] == '0') || b[0] < '0' || b[0] > '9' {
		return 0, fmt.Errorf("proxy protocol v1: bad port %q", b)
	}
	n, err := strconv.ParseUint(string(b), 10, 16)
	if err != nil {
		return 0, fmt.Errorf("proxy protocol v1: bad port %q", b)
	}
	return uint16(n), nil
}

func readV2(br *bufio.Reader) (netip.AddrPort, error) {
	var hdr [16]byte
	if _, err := ioReadFull(br, hdr[:]); err != nil {
		return netip.AddrPort{}, fmt.Errorf("proxy protocol v2: %w", err)
	}
	verCmd, fam := hdr[12], hdr[13]
	n := int(binary.BigEndian.Uint16(hdr[14:16]))
	if verCmd>>4 != 2 {
		return netip.AddrPort{}, fmt.Errorf("proxy protocol v2: version %d", verCmd>>4)
	}
	if n > v2MaxLen {
		return netip.AddrPort{}, fmt.Errorf("proxy protocol v2: header declares %d bytes", n)
	}
	body := make([]byte, n)
	if _, err := ioReadFull(br, body); err != nil {
		return netip.AddrPort{}, fmt.Errorf("proxy protocol v2: %w", err)
	}
	switch verCmd & 0xf {
	case 0: // LOCAL: the balancer's own connection
		return netip.AddrPort{}, nil
	case 1: // PROXY
	default:
		return netip.AddrPort{}, fmt.Errorf("proxy protocol v2: command %d", verCmd&0xf)
	}
	switch fam {
	case 0x11, 0x12: // TCP or UDP over IPv4
		if n < 12 {
			return netip.AddrPort{}, errors.New("proxy protocol v2: short IPv4 addresses")
		}
		src := netip.AddrFrom4([4]byte(body[0:4]))
		return netip.AddrPortFrom(src, binary.BigEndian.Uint16(body[8:10])), nil
	case 0x21, 0x22: // over IPv6
		if n < 36 {
			return netip.AddrPort{}, errors.New("proxy protocol v2: short IPv6 addresses")
		}
		src := netip.AddrFrom16([16]byte(body[0:16])).Unmap()
		return netip.AddrPortFrom(src, binary.BigEndian.Uint16(body[32:34])), nil
	case 0x00: // UNSPEC
		return netip.AddrPort{}, nil
	}
	return netip.AddrPort{}, fmt.Errorf("proxy protocol v2: address family 0x%02x not supported", fam)
}

func ioReadFull(br *bufio.Reader, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := br.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// tcpAddr turns ap into a net.Addr for RemoteAddr.
func tcpAddr(ap netip.AddrPort) net.Addr { return net.TCPAddrFromAddrPort(ap) }
