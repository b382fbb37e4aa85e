package h1

import (
	"bytes"
	"fmt"
	"strconv"
)

// ResponseHead is a backend's response head, parsed in place.
type ResponseHead struct {
	statusLine []byte // from the status code on
	Status     int
	lines      []byte // header lines
	connection [][]byte
	connBuf    [4][]byte
	Length     int64 // -1: none
	Chunked    bool
	KeepAlive  bool // the backend keeps the connection open after it
}

// Parse parses b, a head up to and including its blank line.
func (h *ResponseHead) Parse(b []byte) error {
	*h = ResponseHead{Length: -1}
	h.connection = h.connBuf[:0]
	line, b := cutLine(b)
	if len(line) < 12 || string(line[:7]) != "HTTP/1." || (line[7] != '0' && line[7] != '1') || line[8] != ' ' ||
		(len(line) > 12 && line[12] != ' ') {
		return fmt.Errorf("malformed status line %q", line)
	}
	status, err := strconv.Atoi(string(line[9:12]))
	if err != nil || status < 100 {
		return fmt.Errorf("malformed status line %q", line)
	}
	h.Status, h.statusLine, h.lines = status, line[9:], b
	h.KeepAlive = line[7] == '1'
	toEOF := false
	for len(b) > 0 {
		line, b = cutLine(b)
		if len(line) == 0 {
			break
		}
		if !validHeaderLine(line) {
			return fmt.Errorf("malformed header line %q", line)
		}
		colon := bytes.IndexByte(line, ':')
		name, value := line[:colon], trimOWS(line[colon+1:])
		switch {
		case FoldIs(name, "Content-Length"):
			n, err := strconv.ParseInt(string(value), 10, 64)
			if err != nil || n < 0 || (h.Length >= 0 && n != h.Length) {
				return fmt.Errorf("bad Content-Length %q", value)
			}
			h.Length = n
		case FoldIs(name, "Transfer-Encoding"):
			// Chunked must be the last coding; anything else is read
			// until the backend closes.
			last := value
			if i := bytes.LastIndexByte(value, ','); i >= 0 {
				last = trimOWS(value[i+1:])
			}
			h.Chunked = FoldIs(last, "chunked")
			toEOF = !h.Chunked
		case FoldIs(name, "Connection"):
			h.connection = append(h.connection, value)
			if Listed(value, "close") {
				h.KeepAlive = false
			}
		}
	}
	if h.Chunked || toEOF {
		// Transfer-Encoding overrides Content-Length; a body framed by
		// both, or by neither chunked nor a length, ends the connection.
		if h.Length >= 0 || toEOF {
			h.KeepAlive = false
		}
		h.Length = -1
	}
	return nil
}

// write writes the head for the client: HTTP/1.1, without hop-by-hop
// headers. chunked keeps the backend's chunked framing (and its Trailer
// announcement); close adds Connection: close.
func (h *ResponseHead) write(w Writer, chunked, close bool) {
	w.WriteString("HTTP/1.1 ")
	w.Write(h.statusLine)
	w.WriteString("\r\n")
	b := h.lines
	for len(b) > 0 {
		var line []byte
		line, b = cutLine(b)
		if len(line) == 0 {
			break
		}
		name := line[:bytes.IndexByte(line, ':')]
		if FoldIs(name, "Content-Length") && h.Chunked {
			continue // chunked framing wins
		}
		if FoldIs(name, "Trailer") && chunked {
			// announced trailers come with the chunked body
		} else if HopByHop(name) || ListedInAny(h.connection, name) {
			continue
		}
		w.Write(line)
		w.WriteString("\r\n")
	}
	if chunked {
		w.WriteString("Transfer-Encoding: chunked\r\n")
	}
	if close {
		w.WriteString("Connection: close\r\n")
	}
	w.WriteString("\r\n")
}

// parseChunkSize reads a chunk-size line (without its line end): hex
// digits, then optional extensions after ';'.
func parseChunkSize(line []byte) (int64, error) {
	size := line
	if i := bytes.IndexByte(size, ';'); i >= 0 {
		size = size[:i]
	}
	size = trimOWS(size)
	if len(size) == 0 || len(size) > 15 {
		return 0, fmt.Errorf("bad chunk size %q", line)
	}
	n, err := strconv.ParseInt(string(size), 16, 64)
	if err != nil {
		return 0, fmt.Errorf("bad chunk size %q", line)
	}
	return n, nil
}
