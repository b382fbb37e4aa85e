package h1

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
)

// Relayed says how a response relay ended.
type Relayed struct {
	Started         bool // the final response head was written to the client
	BackendReusable bool // the backend connection is at a message boundary
	ClientClose     bool // the client connection must close after it
}

// ErrHeadTooLarge: a backend's response head (or a chunk line) must fit in
// the backend connection's read buffer.
var ErrHeadTooLarge = errors.New("response head too large")

// Relay relays one response from a backend to a client, as a state
// machine: it is fed the backend's bytes as they arrive and writes what
// the client gets. Informational responses other than 100 are passed on;
// 100 is dropped. The head loses its hop-by-hop headers; the body keeps
// its framing, which is checked on the way.
//
// A Relay points into itself once it has parsed a head, so it should live
// in a longer-lived struct (a connection's) rather than be a local, which
// would move to the heap on every response.
type Relay struct {
	// ForceClose adds Connection: close; it is read when the final head
	// arrives.
	ForceClose bool
	headReq    bool // answering a HEAD request
	state      int
	n          int64 // body or chunk bytes left
	searched   int   // bytes of a head or line searched for its end
	closeDelim bool
	keepAlive  bool
	res        Relayed
	rh         ResponseHead
}

// Relay states.
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

// Reset readies r for the response to a request; headReq: a HEAD request.
func (r *Relay) Reset(headReq bool) {
	*r = Relay{headReq: headReq}
}

// Done reports whether the response was relayed in full.
func (r *Relay) Done() bool { return r.state == rsDone }

// InHead reports whether r waits for the final response head.
func (r *Relay) InHead() bool { return r.state == rsHead }

// Result says how far the relay got.
func (r *Relay) Result() Relayed { return r.res }

// Feed consumes what it can of in, the backend's bytes not yet consumed,
// and returns how much it consumed. size is the backend read buffer's
// size (a head or line that does not fit in it is ErrHeadTooLarge), eof
// that no bytes follow in. room bounds the body bytes written to out.
// wantIn reports that Feed stopped for want of input rather than of room.
func (r *Relay) Feed(in []byte, out Writer, room, size int, eof bool) (used int, wantIn bool, err error) {
	for r.state != rsDone {
		rest := in[used:]
		switch r.state {
		case rsHead:
			n := IndexHeadEnd(rest, r.searched)
			if n < 0 {
				r.searched = max(0, len(rest)-3)
				return used, true, r.short(rest, size, eof, ErrHeadTooLarge)
			}
			r.searched = 0
			rh := &r.rh
			if err := rh.Parse(rest[:n]); err != nil {
				return used, false, err
			}
			switch {
			case rh.Status == 101:
				return used, false, errors.New("backend switched protocols without an upgrade request")
			case rh.Status == 100:
				used += n
				continue
			case rh.Status < 200:
				rh.write(out, false, false)
				used += n
				continue
			}
			noBody := r.headReq || rh.Status == 204 || rh.Status == 304
			r.closeDelim = !noBody && !rh.Chunked && rh.Length < 0
			r.keepAlive = rh.KeepAlive
			r.res.ClientClose = r.ForceClose || r.closeDelim
			rh.write(out, !noBody && rh.Chunked, r.res.ClientClose)
			used += n
			r.res.Started = true
			switch {
			case noBody:
				r.finish()
			case rh.Chunked:
				r.state = rsChunkSize
			case rh.Length >= 0:
				r.state, r.n = rsLength, rh.Length
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

// short is Feed's answer when in holds only part of a head or line.
func (r *Relay) short(rest []byte, size int, eof bool, tooLarge error) error {
	switch {
	case len(rest) >= size:
		return tooLarge
	case eof && len(rest) == 0 && r.state == rsHead && !r.res.Started:
		return io.EOF
	case eof:
		return io.ErrUnexpectedEOF
	}
	return nil
}

// line handles a line of chunked framing, already relayed.
func (r *Relay) line(line []byte) error {
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

func (r *Relay) finish() {
	r.state = rsDone
	r.res.BackendReusable = !r.closeDelim && r.keepAlive
}

// RelayResponse drives r, already Reset, over a blocking backend reader:
// it feeds r what br holds, and flushes bw whenever it is about to wait
// for the backend, so streams flow.
func RelayResponse(r *Relay, bw *bufio.Writer, br *bufio.Reader) (Relayed, error) {
	eof := false
	for {
		in, _ := br.Peek(br.Buffered())
		used, _, err := r.Feed(in, bw, math.MaxInt, br.Size(), eof)
		br.Discard(used)
		if err != nil || r.Done() {
			return r.res, err
		}
		// Feed stopped for want of input: whatever it left in br is less
		// than the buffer holds, else it would have failed.
		if err := bw.Flush(); err != nil {
			return r.res, err
		}
		if _, err := br.Peek(br.Buffered() + 1); err == io.EOF {
			eof = true
		} else if err != nil {
			return r.res, err
		}
	}
}

// ReadHead waits for a whole head in br and returns its length, end of
// head included, without consuming it. A head that does not fit in br is
// ErrHeadTooLarge.
func ReadHead(br *bufio.Reader) (int, error) {
	searched := 0
	for {
		buf, _ := br.Peek(br.Buffered())
		if i := IndexHeadEnd(buf, searched); i >= 0 {
			return i, nil
		}
		if len(buf) == br.Size() {
			return 0, ErrHeadTooLarge
		}
		searched = max(0, len(buf)-3)
		if _, err := br.Peek(len(buf) + 1); err != nil {
			return 0, err
		}
	}
}
