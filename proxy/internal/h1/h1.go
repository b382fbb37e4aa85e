// Package h1 is the proxy's HTTP/1.1 core: the request head parser of its
// fast path, and the response relay that both its forwarding paths use —
// the goroutine per connection (RelayResponse, over a bufio.Reader) and
// the event loop (Relay.Feed, over a non-blocking socket's bytes). One
// parser and one relay, so the two paths cannot drift apart in what they
// accept or in the bytes a client gets.
//
// Everything parses in place: the slices of a Request or ResponseHead
// point into the buffer they were parsed from.
package h1

import (
	"bytes"
	"io"

	"golang.org/x/net/http/httpguts"
)

// Writer is what heads and relayed bytes are written to: a bufio.Writer
// on the goroutine path, an OutBuf in the event loop.
type Writer interface {
	io.Writer
	io.StringWriter
	io.ByteWriter
}

// OutBuf collects bytes to write to a non-blocking socket.
type OutBuf struct{ B []byte }

func (o *OutBuf) Write(p []byte) (int, error)       { o.B = append(o.B, p...); return len(p), nil }
func (o *OutBuf) WriteString(s string) (int, error) { o.B = append(o.B, s...); return len(s), nil }
func (o *OutBuf) WriteByte(c byte) error            { o.B = append(o.B, c); return nil }

// WriteHeader writes one header line.
func WriteHeader(w Writer, k, v string) {
	w.WriteString(k)
	w.WriteString(": ")
	w.WriteString(v)
	w.WriteString("\r\n")
}

// IndexHeadEnd returns the length of the head in b up to and including
// its blank line, or -1. from is where to resume a search.
func IndexHeadEnd(b []byte, from int) int {
	for i := from; i+3 < len(b); i++ {
		if b[i] == '\r' && b[i+1] == '\n' && b[i+2] == '\r' && b[i+3] == '\n' {
			return i + 4
		}
		if b[i] == '\n' && i+1 < len(b) && b[i+1] == '\n' {
			return i + 2 // bare LFs: Parse refuses it, net/http decides
		}
	}
	return -1
}

// cutCRLF cuts b at its first line end, which must be CRLF.
func cutCRLF(b []byte) (line, rest []byte, ok bool) {
	i := bytes.IndexByte(b, '\n')
	if i < 1 || b[i-1] != '\r' {
		return nil, nil, false
	}
	line = b[:i-1]
	if bytes.IndexByte(line, '\r') >= 0 {
		return nil, nil, false
	}
	return line, b[i+1:], true
}

// cutLine cuts b after its first LF, dropping the line end (CRLF or LF).
func cutLine(b []byte) (line, rest []byte) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return b, nil
	}
	line, rest = b[:i], b[i+1:]
	if len(line) > 0 && line[len(line)-1] == '\r' {
		line = line[:len(line)-1]
	}
	return line, rest
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// validToken reports whether b is an RFC 9110 token, as a header name
// must be.
func validToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !httpguts.IsTokenRune(rune(c)) {
			return false
		}
	}
	return true
}

// ValidHeaderValue reports whether v has no control characters but tab.
func ValidHeaderValue[T string | []byte](v T) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

// validHeaderLine reports whether line is "name: value" with a token for
// a name and no control characters in the value.
func validHeaderLine(line []byte) bool {
	colon := bytes.IndexByte(line, ':')
	return colon > 0 && validToken(line[:colon]) && ValidHeaderValue(line[colon+1:])
}

// FoldIs reports whether b equals s, ignoring ASCII case.
func FoldIs[T string | []byte](b []byte, s T) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c, d := b[i], s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if 'A' <= d && d <= 'Z' {
			d += 'a' - 'A'
		}
		if c != d {
			return false
		}
	}
	return true
}

// Listed reports whether the comma-separated list v contains tok,
// ignoring case.
func Listed[T string | []byte](v []byte, tok T) bool {
	for len(v) > 0 {
		item := v
		if i := bytes.IndexByte(v, ','); i >= 0 {
			item, v = v[:i], v[i+1:]
		} else {
			v = nil
		}
		if FoldIs(trimOWS(item), tok) {
			return true
		}
	}
	return false
}

// ListedInAny reports whether any of the lists in values contains tok.
func ListedInAny(values [][]byte, tok []byte) bool {
	for _, v := range values {
		if Listed(v, tok) {
			return true
		}
	}
	return false
}

// hopByHop lists the hop-by-hop headers, as httputil.ReverseProxy counts
// them.
var hopByHop = [...]string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// HopByHop reports whether k, in any case, is a hop-by-hop header.
func HopByHop(k []byte) bool {
	for _, h := range hopByHop {
		if FoldIs(k, h) {
			return true
		}
	}
	return false
}

// Discard is a Writer that drops what it is given.
var Discard Writer = discard{}

type discard struct{}

func (discard) Write(p []byte) (int, error)       { return len(p), nil }
func (discard) WriteString(s string) (int, error) { return len(s), nil }
func (discard) WriteByte(byte) error              { return nil }
