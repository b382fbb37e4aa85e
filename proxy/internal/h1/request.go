package h1

import (
	"bytes"

	"golang.org/x/net/http/httpguts"
)

// MaxHeaders bounds the header lines of a request Parse accepts.
const MaxHeaders = 64

// Request is a request head parsed in place. Its slices point into the
// buffer it was parsed from and are valid as long as that is.
type Request struct {
	Method []byte
	Head   bool   // a HEAD request
	Target []byte // the request target, raw: origin-form
	// OddPath: the target has a '/' before '/', '.' or '%', or an escaped
	// slash — empty or dot segments that a proxy may have to normalize.
	OddPath    bool
	Host       []byte
	Close      bool // the client asked to close after the response
	TETrailers bool
	Connection [][]byte // values of Connection headers
	Headers    []Header
	connBuf    [4][]byte
	headerBuf  [MaxHeaders]Header
}

type Header struct{ Name, Value []byte }

// Parse parses an HTTP/1.1 GET or HEAD head without a body, b being the
// head up to and including its blank line. It reports false for anything
// else, and for anything it does not fully understand, which then goes to
// net/http: a head it accepts, net/http reads the same way.
func (r *Request) Parse(b []byte) bool {
	*r = Request{}
	r.Connection = r.connBuf[:0]
	r.Headers = r.headerBuf[:0]

	line, b, ok := cutCRLF(b)
	if !ok {
		return false
	}
	sp := bytes.IndexByte(line, ' ')
	if sp < 0 {
		return false
	}
	r.Method, line = line[:sp], line[sp+1:]
	switch string(r.Method) {
	case "GET":
	case "HEAD":
		r.Head = true
	default:
		return false
	}
	sp = bytes.IndexByte(line, ' ')
	if sp < 0 || string(line[sp+1:]) != "HTTP/1.1" {
		return false
	}
	if !r.parseTarget(line[:sp]) {
		return false
	}

	hosts := 0
	for {
		line, b, ok = cutCRLF(b)
		if !ok {
			return false
		}
		if len(line) == 0 {
			break
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 || len(r.Headers) == cap(r.Headers) {
			return false
		}
		name, value := line[:colon], trimOWS(line[colon+1:])
		if !validToken(name) || !ValidHeaderValue(value) {
			return false
		}
		switch {
		case FoldIs(name, "Host"):
			hosts++
			r.Host = value
		case FoldIs(name, "Content-Length"):
			if string(value) != "0" {
				return false
			}
		case FoldIs(name, "Transfer-Encoding"), FoldIs(name, "Upgrade"), FoldIs(name, "Expect"):
			return false
		case FoldIs(name, "Connection"):
			if Listed(value, "close") {
				r.Close = true
			}
			r.Connection = append(r.Connection, value)
		case FoldIs(name, "Te"):
			if Listed(value, "trailers") {
				r.TETrailers = true
			}
		}
		r.Headers = append(r.Headers, Header{name, value})
	}
	return len(b) == 0 && hosts == 1 && validHost(r.Host)
}

// validHost is httpguts.ValidHostHeader, net/http's check, without
// allocating: it checks each byte alone, so it can take the host in
// pieces no longer than the stack buffer a string conversion may use (a
// backend's host, <label>.<suffix>, is longer).
func validHost(h []byte) bool {
	for len(h) > 0 {
		n := min(len(h), 32)
		if !httpguts.ValidHostHeader(string(h[:n])) {
			return false
		}
		h = h[n:]
	}
	return true
}

// parseTarget accepts an origin-form target: a '/', then visible ASCII
// but '#', with well-formed escapes. One table lookup per byte sorts out
// the few bytes that need a look.
func (r *Request) parseTarget(t []byte) bool {
	if len(t) == 0 || t[0] != '/' {
		return false
	}
	for i := 0; i < len(t); i++ {
		switch targetClass[t[i]] {
		case tcPlain:
		case tcBad:
			return false
		case tcSlash:
			if i+1 < len(t) {
				if c := t[i+1]; c == '/' || c == '.' || c == '%' {
					r.OddPath = true
				}
			}
		case tcEscape:
			if i+2 >= len(t) || !isHex(t[i+1]) || !isHex(t[i+2]) {
				return false
			}
			if t[i+1] == '2' && t[i+2]|0x20 == 'f' {
				r.OddPath = true
			}
		}
	}
	r.Target = t
	return true
}

// Classes of a request target's bytes, for parseTarget.
const (
	tcPlain = iota
	tcBad   // not visible ASCII, or '#'
	tcSlash
	tcEscape
)

var targetClass = func() (class [256]uint8) {
	for c := range class {
		if c <= ' ' || c >= 0x7f || c == '#' {
			class[c] = tcBad
		}
	}
	class['/'], class['%'] = tcSlash, tcEscape
	return class
}()

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}
