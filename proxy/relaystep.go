package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
)

// headWriter is what request and response heads are written to: a
// bufio.Writer on the goroutine path, an outBuf in the event loop.
type headWriter interface {
	io.Writer
	io.StringWriter
	io.ByteWriter
}

var (
	_ headWriter = (*outBuf)(nil)
	_ headWriter = (*bufio.Writer)(nil)
)

// outBuf collects bytes to write to a non-blocking socket.
type outBuf struct{ b []byte }

func (o *outBuf) Write(p []byte) (int, error)       { o.b = append(o.b, p...); return len(p), nil }
func (o *outBuf) WriteString(s string) (int, error) { o.b = append(o.b, s...); return len(s), nil }
func (o *outBuf) WriteByte(c byte) error            { o.b = append(o.b, c); return nil }

// backendReadSize is the event loop's read buffer for a backend
// connection, as large as the goroutine path's backend reader.
const backendReadSize = 16 << 10

// relayStep is relayResponse as a state machine for the event loop: it is
// fed the backend's bytes as they arrive and appends what the client gets
// to an outBuf, with the same framing checks and the same output.
type relayStep struct {
	headReq    bool // answering a HEAD request
	forceClose bool // add Connection: close; read when the final head arrives
	state      int
	n          int64 // body or chunk bytes left
	searched   int   // bytes of a head or line searched for its end
	closeDelim bool
	keepAlive  bool
	res        relayed
	// rh is the head being relayed. It lives here because it points into
	// itself (connBuf), which would move a local one to the heap on every
	// response.
	rh responseHead
}

// relayStep states.
const (
	rsHead      = iota // response heads, informational ones included
	rsLength           // a body of n bytes
	rsToEOF            // a body that ends when the backend closes
	rsChunkSize        // a chunk-size line
	rsChunkData        // n bytes of chunk data
	rsChunkEnd         // the CRLF after chunk data
	rsTrailer          // trailer lines, up to the blank line
	rsDone
)

func (r *relayStep) reset(headReq bool) {
	*r = relayStep{headReq: headReq}
}

func (r *relayStep) done() bool { return r.state == rsDone }

// feed consumes what it can of in, the backend's bytes not yet consumed,
// and returns how much it consumed. size is the backend read buffer's
// size (a head or line that does not fit in it is an error, as
// relayResponse's), eof that no bytes follow in. room bounds the body
// bytes appended to out. wantIn reports that feed stopped for want of
// input rather than of room.
func (r *relayStep) feed(in []byte, out *outBuf, room, size int, eof bool) (used int, wantIn bool, err error) {
	for r.state != rsDone {
		rest := in[used:]
		switch r.state {
		case rsHead:
			n := indexHeadEnd(rest, r.searched)
			if n < 0 {
				r.searched = max(0, len(rest)-3)
				return used, true, r.short(rest, size, eof, errHeadTooLarge)
			}
			r.searched = 0
			rh := &r.rh
			if err := rh.parse(rest[:n]); err != nil {
				return used, false, err
			}
			switch {
			case rh.status == 101:
				return used, false, errors.New("backend switched protocols without an upgrade request")
			case rh.status == 100:
				used += n
				continue
			case rh.status < 200:
				rh.write(out, false, false)
				used += n
				continue
			}
			noBody := r.headReq || rh.status == 204 || rh.status == 304
			r.closeDelim = !noBody && !rh.chunked && rh.length < 0
			r.keepAlive = rh.keepAlive
			r.res.clientClose = r.forceClose || r.closeDelim
			rh.write(out, !noBody && rh.chunked, r.res.clientClose)
			used += n
			r.res.started = true
			switch {
			case noBody:
				r.finish()
			case rh.chunked:
				r.state = rsChunkSize
			case rh.length >= 0:
				r.state, r.n = rsLength, rh.length
				if r.n == 0 {
					r.finish()
				}
			default:
				r.state = rsToEOF
			}
		case rsLength, rsChunkData:
			if len(rest) == 0 {
				if eof {
					return used, true, io.ErrUnexpectedEOF
				}
				return used, true, nil
			}
			if room <= 0 {
				return used, false, nil
			}
			k := int(min(int64(len(rest)), r.n, int64(room)))
			out.Write(rest[:k])
			used += k
			room -= k
			r.n -= int64(k)
			if r.n == 0 {
				if r.state == rsLength {
					r.finish()
				} else {
					r.state = rsChunkEnd
				}
			}
		case rsToEOF:
			if len(rest) == 0 {
				if eof {
					r.finish()
					continue
				}
				return used, true, nil
			}
			if room <= 0 {
				return used, false, nil
			}
			k := min(len(rest), room)
			out.Write(rest[:k])
			used += k
			room -= k
		default: // a line: chunk size, chunk end or trailer
			i := bytes.IndexByte(rest[r.searched:], '\n')
			if i < 0 {
				r.searched = len(rest)
				return used, true, r.short(rest, size, eof, errors.New("chunk line too long"))
			}
			i += r.searched
			r.searched = 0
			line, _ := cutLine(rest[:i+1])
			out.Write(line)
			out.WriteString("\r\n") // a bare LF becomes CRLF
			used += i + 1
			if err := r.line(line); err != nil {
				return used, false, err
			}
		}
	}
	return used, false, nil
}

// short is feed's answer when in holds only part of a head or line.
func (r *relayStep) short(rest []byte, size int, eof bool, tooLarge error) error {
	switch {
	case len(rest) >= size:
		return tooLarge
	case eof && len(rest) == 0 && r.state == rsHead && !r.res.started:
		return io.EOF
	case eof:
		return io.ErrUnexpectedEOF
	}
	return nil
}

// line handles a line of chunked framing, already relayed.
func (r *relayStep) line(line []byte) error {
	switch r.state {
	case rsChunkEnd:
		if len(line) != 0 {
			return errors.New("chunk not followed by CRLF")
		}
		r.state = rsChunkSize
	case rsTrailer:
		if len(line) == 0 {
			r.finish()
		} else if !validHeaderLine(line) {
			return fmt.Errorf("malformed trailer line %q", line)
		}
	case rsChunkSize:
		n, err := parseChunkSize(line)
		if err != nil {
			return err
		}
		if n == 0 {
			r.state = rsTrailer
		} else {
			r.state, r.n = rsChunkData, n
		}
	}
	return nil
}

func (r *relayStep) finish() {
	r.state = rsDone
	r.res.backendReusable = !r.closeDelim && r.keepAlive
}
