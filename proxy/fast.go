package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"

	"golang.org/x/net/http/httpguts"
)

// request is a request head parsed in place by the Server's fast path.
// Its slices point into the connection's read buffer and are valid until
// the head is discarded.
type request struct {
	method     []byte
	head       bool // a HEAD request
	token      []byte
	rest       []byte // the path after the token, from its slash; raw
	hasRest    bool
	query      []byte // raw, without '?'
	hasQuery   bool
	host       []byte
	close      bool // the client asked to close after the response
	teTrailers bool
	connection [][]byte // values of Connection headers
	connBuf    [4][]byte
	headers    []header
	headerBuf  [maxHeaders]header
}

type header struct{ name, value []byte }

// parse parses an HTTP/1.1 GET or HEAD head without a body. It reports
// false for anything else, and for anything it does not fully understand,
// which then goes to net/http.
func (r *request) parse(b []byte) bool {
	*r = request{}
	r.connection = r.connBuf[:0]
	r.headers = r.headerBuf[:0]

	line, b, ok := cutCRLF(b)
	if !ok {
		return false
	}
	sp := bytes.IndexByte(line, ' ')
	if sp < 0 {
		return false
	}
	r.method, line = line[:sp], line[sp+1:]
	switch string(r.method) {
	case "GET":
	case "HEAD":
		r.head = true
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
		if colon <= 0 || len(r.headers) == cap(r.headers) {
			return false
		}
		name, value := line[:colon], trimOWS(line[colon+1:])
		if !validToken(name) || !validHeaderValue(value) {
			return false
		}
		switch {
		case foldIs(name, "Host"):
			hosts++
			r.host = value
		case foldIs(name, "Content-Length"):
			if string(value) != "0" {
				return false
			}
		case foldIs(name, "Transfer-Encoding"), foldIs(name, "Upgrade"), foldIs(name, "Expect"):
			return false
		case foldIs(name, "Connection"):
			if listedBytes(value, "close") {
				r.close = true
			}
			r.connection = append(r.connection, value)
		case foldIs(name, "Te"):
			if listedBytes(value, "trailers") {
				r.teTrailers = true
			}
		}
		r.headers = append(r.headers, header{name, value})
	}
	return len(b) == 0 && hosts == 1 && httpguts.ValidHostHeader(string(r.host))
}

// parseTarget splits /<token>/<rest>?<query>. It leaves to net/http what
// net/http would treat differently (escapes inside the token, bad escapes,
// bytes that are not visible ASCII, absolute URLs) and what the Proxy
// normalizes or refuses there (see path.go): dot-segments, empty segments,
// escaped slashes. Only a '/' followed by '/', '.' or '%', or a "%2f",
// costs more than the scan.
func (r *request) parseTarget(t []byte) bool {
	if len(t) < 2 || t[0] != '/' {
		return false
	}
	odd := false // a '/' before '/', '.' or '%', or an escaped slash
	for i := 0; i < len(t); i++ {
		switch targetClass[t[i]] {
		case tcPlain:
		case tcBad:
			return false
		case tcSlash:
			if i+1 < len(t) {
				if c := t[i+1]; c == '/' || c == '.' || c == '%' {
					odd = true
				}
			}
		case tcEscape:
			if i+2 >= len(t) || !isHex(t[i+1]) || !isHex(t[i+2]) {
				return false
			}
			if t[i+1] == '2' && t[i+2]|0x20 == 'f' {
				odd = true
			}
		}
	}
	path := t
	if q := bytes.IndexByte(t, '?'); q >= 0 {
		path, r.query, r.hasQuery = t[:q], t[q+1:], true
	}
	if j := bytes.IndexByte(path[1:], '/'); j >= 0 {
		r.token, r.rest, r.hasRest = path[1:1+j], path[1+j:], true
	} else {
		r.token = path[1:]
	}
	return bytes.IndexByte(r.token, '%') < 0 && !(odd && oddPath(r.rest))
}

// Classes of a request target's bytes, for parseTarget: one table lookup
// per byte sorts out the few that need a look.
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

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
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

// foldIs reports whether b equals s, ignoring ASCII case.
func foldIs[T string | []byte](b []byte, s T) bool {
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

// listedBytes reports whether the comma-separated list v contains tok,
// ignoring case.
func listedBytes[T string | []byte](v []byte, tok T) bool {
	for len(v) > 0 {
		item := v
		if i := bytes.IndexByte(v, ','); i >= 0 {
			item, v = v[:i], v[i+1:]
		} else {
			v = nil
		}
		if foldIs(trimOWS(item), tok) {
			return true
		}
	}
	return false
}

func listedInAny(values [][]byte, tok []byte) bool {
	for _, v := range values {
		if listedBytes(v, tok) {
			return true
		}
	}
	return false
}

// dropRequestHeaderBytes is dropRequestHeader for a name in any case.
func dropRequestHeaderBytes(k []byte) bool {
	for _, h := range droppedRequestHeaders {
		if foldIs(k, h) {
			return true
		}
	}
	return isBerthHeader(k)
}

var droppedRequestHeaders = [...]string{
	"Content-Length", "Expect", "Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto",
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// writeFastRequest writes req to the backend as writeRequest does for a
// net/http request.
func writeFastRequest(bw headWriter, req *request, fw *forward, clientIP string) {
	bw.Write(req.method)
	bw.WriteByte(' ')
	bw.Write(req.rest)
	if req.hasQuery {
		bw.WriteByte('?')
		bw.Write(req.query)
	}
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.Write(req.host)
	bw.WriteString("\r\n")
	for _, h := range req.headers {
		if foldIs(h.name, "Host") || dropRequestHeaderBytes(h.name) || listedInAny(req.connection, h.name) {
			continue
		}
		bw.Write(h.name)
		bw.WriteString(": ")
		bw.Write(h.value)
		bw.WriteString("\r\n")
	}
	if req.teTrailers {
		writeHeader(bw, "Te", "trailers")
	}
	if clientIP != "" {
		writeHeader(bw, "X-Forwarded-For", clientIP)
	}
	bw.WriteString("X-Forwarded-Host: ")
	bw.Write(req.host)
	bw.WriteString("\r\nX-Forwarded-Proto: http\r\n")
	writeHeader(bw, HeaderBackend, fw.claims.BackendID)
	writeHeader(bw, HeaderUser, fw.claims.User)
	writeHeader(bw, HeaderSecret, fw.route.Secret)
	bw.WriteString("\r\n")
}

// checkAdded refuses values the proxy would add that could break the
// request's framing (a user name is whatever the application passed to
// connect); the client's own headers were checked by parse.
func checkAdded(fw *forward) error {
	for _, h := range [...]struct{ k, v string }{
		{HeaderBackend, fw.claims.BackendID}, {HeaderSecret, fw.route.Secret}, {HeaderUser, fw.claims.User},
	} {
		if !validHeaderValue(h.v) {
			return fmt.Errorf("invalid value for header %s", h.k)
		}
	}
	return nil
}

// relayed says how a response relay ended.
type relayed struct {
	started         bool // the final response head was written to the client
	backendReusable bool // the backend connection is at a message boundary
	clientClose     bool // the client connection must close after it
}

// errHeadTooLarge: a backend's response head must fit in the backend
// connection's read buffer.
var errHeadTooLarge = errors.New("response head too large")

// relayResponse reads the backend's response from br and writes it to bw,
// flushing bw whenever it would otherwise wait for the backend, so streams
// flow. Informational responses other than 100 are passed on; 100 is
// dropped. forceClose adds Connection: close.
func relayResponse(bw *bufio.Writer, br *bufio.Reader, headReq, forceClose bool) (res relayed, err error) {
	for {
		n, err := readHeadIn(br)
		if err != nil {
			return res, err
		}
		head, _ := br.Peek(n)
		var rh responseHead
		if err := rh.parse(head); err != nil {
			return res, err
		}
		switch {
		case rh.status == 101:
			return res, errors.New("backend switched protocols without an upgrade request")
		case rh.status == 100:
			br.Discard(n)
			continue
		case rh.status < 200:
			rh.write(bw, false, false)
			br.Discard(n)
			if err := bw.Flush(); err != nil {
				return res, err
			}
			continue
		}

		noBody := headReq || rh.status == 204 || rh.status == 304
		closeDelimited := !noBody && !rh.chunked && rh.length < 0
		res.clientClose = forceClose || closeDelimited
		rh.write(bw, !noBody && rh.chunked, res.clientClose)
		br.Discard(n)
		res.started = true
		switch {
		case noBody:
		case rh.chunked:
			err = relayChunked(bw, br)
		case rh.length >= 0:
			err = relayN(bw, br, rh.length)
		default:
			err = relayToEOF(bw, br)
		}
		res.backendReusable = err == nil && !closeDelimited && rh.keepAlive
		return res, err
	}
}

// readHeadIn waits for a whole head (request or response) in br and
// returns its length, end of head included, without consuming it.
func readHeadIn(br *bufio.Reader) (int, error) {
	searched := 0
	for {
		buf, _ := br.Peek(br.Buffered())
		if i := indexHeadEnd(buf, searched); i >= 0 {
			return i, nil
		}
		if len(buf) == br.Size() {
			return 0, errHeadTooLarge
		}
		searched = max(0, len(buf)-3)
		if _, err := br.Peek(len(buf) + 1); err != nil {
			return 0, err
		}
	}
}

type responseHead struct {
	statusLine []byte // from the status code on
	status     int
	lines      []byte // header lines
	connection [][]byte
	connBuf    [4][]byte
	length     int64 // -1: none
	chunked    bool
	keepAlive  bool
}

func (h *responseHead) parse(b []byte) error {
	*h = responseHead{length: -1}
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
	h.status, h.statusLine, h.lines = status, line[9:], b
	h.keepAlive = line[7] == '1'
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
		case foldIs(name, "Content-Length"):
			n, err := strconv.ParseInt(string(value), 10, 64)
			if err != nil || n < 0 || (h.length >= 0 && n != h.length) {
				return fmt.Errorf("bad Content-Length %q", value)
			}
			h.length = n
		case foldIs(name, "Transfer-Encoding"):
			// Chunked must be the last coding; anything else is read
			// until the backend closes.
			last := value
			if i := bytes.LastIndexByte(value, ','); i >= 0 {
				last = trimOWS(value[i+1:])
			}
			h.chunked = foldIs(last, "chunked")
			toEOF = !h.chunked
		case foldIs(name, "Connection"):
			h.connection = append(h.connection, value)
			if listedBytes(value, "close") {
				h.keepAlive = false
			}
		}
	}
	if h.chunked || toEOF {
		// Transfer-Encoding overrides Content-Length; a body framed by
		// both, or by neither chunked nor a length, ends the connection.
		if h.length >= 0 || toEOF {
			h.keepAlive = false
		}
		h.length = -1
	}
	return nil
}

// write writes the head for the client: HTTP/1.1, without hop-by-hop
// headers. chunked keeps the backend's chunked framing (and its Trailer
// announcement); close adds Connection: close.
func (h *responseHead) write(bw headWriter, chunked, close bool) {
	bw.WriteString("HTTP/1.1 ")
	bw.Write(h.statusLine)
	bw.WriteString("\r\n")
	b := h.lines
	for len(b) > 0 {
		var line []byte
		line, b = cutLine(b)
		if len(line) == 0 {
			break
		}
		name := line[:bytes.IndexByte(line, ':')]
		if foldIs(name, "Content-Length") && h.chunked {
			continue // chunked framing wins
		}
		if foldIs(name, "Trailer") && chunked {
			// announced trailers come with the chunked body
		} else if hopByHopBytes(name) || listedInAny(h.connection, name) {
			continue
		}
		bw.Write(line)
		bw.WriteString("\r\n")
	}
	if chunked {
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	}
	if close {
		bw.WriteString("Connection: close\r\n")
	}
	bw.WriteString("\r\n")
}

// validHeaderLine reports whether line is "name: value" with a token for
// a name and no control characters in the value.
func validHeaderLine(line []byte) bool {
	colon := bytes.IndexByte(line, ':')
	return colon > 0 && validToken(line[:colon]) && validHeaderValue(line[colon+1:])
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

func hopByHopBytes(k []byte) bool {
	for _, h := range [...]string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
		"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"} {
		if foldIs(k, h) {
			return true
		}
	}
	return false
}

// wait flushes bw when br has nothing buffered, so the client has all it
// can have before the relay waits for the backend, and then waits.
func wait(bw *bufio.Writer, br *bufio.Reader) error {
	if br.Buffered() > 0 {
		return nil
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	_, err := br.Peek(1)
	return err
}

// relayN copies n bytes of body.
func relayN(bw *bufio.Writer, br *bufio.Reader, n int64) error {
	for n > 0 {
		if err := wait(bw, br); err != nil {
			return err
		}
		b, _ := br.Peek(int(min(int64(br.Buffered()), n)))
		if _, err := bw.Write(b); err != nil {
			return err
		}
		br.Discard(len(b))
		n -= int64(len(b))
	}
	return nil
}

// relayToEOF copies a body that ends when the backend closes.
func relayToEOF(bw *bufio.Writer, br *bufio.Reader) error {
	for {
		if err := wait(bw, br); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		b, _ := br.Peek(br.Buffered())
		if _, err := bw.Write(b); err != nil {
			return err
		}
		br.Discard(len(b))
	}
}

// relayChunked copies a chunked body as it is, chunk sizes, extensions
// and trailers included, checking its framing on the way.
func relayChunked(bw *bufio.Writer, br *bufio.Reader) error {
	for {
		line, err := relayLine(bw, br)
		if err != nil {
			return err
		}
		n, err := parseChunkSize(line)
		if err != nil {
			return err
		}
		if n == 0 {
			for { // trailers, up to the blank line
				line, err := relayLine(bw, br)
				if err != nil {
					return err
				}
				if len(line) == 0 {
					return nil
				}
				if !validHeaderLine(line) {
					return fmt.Errorf("malformed trailer line %q", line)
				}
			}
		}
		if err := relayN(bw, br, n); err != nil {
			return err
		}
		line, err = relayLine(bw, br)
		if err != nil {
			return err
		}
		if len(line) != 0 {
			return errors.New("chunk not followed by CRLF")
		}
	}
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

// relayLine copies one line and returns it without its line end.
func relayLine(bw *bufio.Writer, br *bufio.Reader) ([]byte, error) {
	if err := wait(bw, br); err != nil {
		return nil, err
	}
	line, err := br.ReadSlice('\n')
	if err != nil {
		return nil, err
	}
	line, _ = cutLine(line)
	bw.Write(line)
	if _, err := bw.WriteString("\r\n"); err != nil { // a bare LF becomes CRLF
		return nil, err
	}
	return line, nil
}
