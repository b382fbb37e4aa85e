package h1

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"testing"
)

// readSize is a backend read buffer, as the proxy's.
const readSize = 16 << 10

// stepRelay feeds in to a Relay the way the event loop does: through a
// backend buffer of readSize, chunk bytes per read, with at most room
// body bytes buffered for the client between writes.
func stepRelay(in []byte, headReq bool, chunk, room int) (out []byte, res Relayed, consumed int, err error) {
	var r Relay
	r.Reset(headReq)
	buf := make([]byte, readSize)
	var ob OutBuf
	start, end, pos := 0, 0, 0
	eof := false
	for {
		used, wantIn, ferr := r.Feed(buf[start:end], &ob, room-len(ob.B), len(buf), eof)
		start += used
		if ferr != nil || r.Done() {
			return append(out, ob.B...), r.Result(), pos - (end - start), ferr
		}
		out, ob.B = append(out, ob.B...), ob.B[:0] // the client took it
		if !wantIn {
			continue
		}
		if eof {
			panic("Feed wants input after EOF")
		}
		end = copy(buf, buf[start:end])
		start = 0
		n := copy(buf[end:], in[pos:min(pos+chunk, len(in))])
		if n == 0 {
			eof = true
		}
		pos += n
		end += n
	}
}

// blockingRelay relays in as the goroutine path does, through
// RelayResponse, and says how many bytes it took from the backend.
func blockingRelay(in []byte, headReq bool) (out []byte, res Relayed, consumed int, err error) {
	var w bytes.Buffer
	bw := bufio.NewWriter(&w)
	rd := bytes.NewReader(in)
	br := bufio.NewReaderSize(rd, readSize)
	var r Relay
	r.Reset(headReq)
	res, err = RelayResponse(&r, bw, br)
	bw.Flush()
	return w.Bytes(), res, len(in) - rd.Len() - br.Buffered(), err
}

func TestRelay(t *testing.T) {
	for _, tt := range []struct {
		name, in string
		head     bool
		want     string
		reusable bool
	}{
		{"length", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nKeep-Alive: x\r\n\r\nhello", false,
			"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", true},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\n0\r\nX-T: 1\r\n\r\n", false,
			"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\nX-T: 1\r\n\r\n", true},
		{"to EOF", "HTTP/1.1 200 OK\r\n\r\nuntil close", false,
			"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close", false},
		{"head", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true,
			"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true},
		{"early hints", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.0 204 No Content\r\n\r\n", false,
			"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", false},
		{"connection-listed header", "HTTP/1.1 304 Not Modified\r\nConnection: X-A\r\nX-A: 1\r\nETag: \"e\"\r\n\r\n", false,
			"HTTP/1.1 304 Not Modified\r\nETag: \"e\"\r\n\r\n", true},
	} {
		for _, chunk := range []int{1, 3, 1 << 20} {
			out, res, consumed, err := stepRelay([]byte(tt.in), tt.head, chunk, 2)
			if err != nil || string(out) != tt.want || res.BackendReusable != tt.reusable || consumed != len(tt.in) {
				t.Errorf("%s, %d-byte reads: %q reusable %v consumed %d, %v; want %q reusable %v consumed all",
					tt.name, chunk, out, res.BackendReusable, consumed, err, tt.want, tt.reusable)
			}
		}
		out, res, consumed, err := blockingRelay([]byte(tt.in), tt.head)
		if err != nil || string(out) != tt.want || res.BackendReusable != tt.reusable || consumed != len(tt.in) {
			t.Errorf("%s, blocking: %q reusable %v consumed %d, %v; want %q reusable %v consumed all",
				tt.name, out, res.BackendReusable, consumed, err, tt.want, tt.reusable)
		}
	}
}

func TestRelay_Refuses(t *testing.T) {
	for _, in := range []string{
		"HTTP/1.1 101 Switching Protocols\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloX\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel",
		"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
		"HTTP/1.1 200 OK\r\nX-Long: " + string(bytes.Repeat([]byte("a"), readSize)) + "\r\n\r\n",
		"",
	} {
		if _, _, _, err := blockingRelay([]byte(in), false); err == nil {
			t.Errorf("%.60q: relayed, want an error", in)
		}
		if _, _, _, err := stepRelay([]byte(in), false, 7, 100); err == nil {
			t.Errorf("%.60q: relayed step by step, want an error", in)
		}
	}
}

// FuzzRelay checks the relay: however the backend's bytes are split and
// however little the client takes at a time, the client gets the same
// bytes, the relay ends the same way and takes the same bytes from the
// backend as the goroutine path's blocking relay; and a response relayed
// without error reads back as HTTP.
func FuzzRelay(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"), false, uint16(1), uint8(1))
	f.Add([]byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"), false, uint16(7), uint8(3))
	f.Add([]byte("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.0 200 OK\r\n\r\nrest"), false, uint16(300), uint8(0))
	f.Add([]byte("HTTP/1.1 304 Not Modified\r\nConnection: X-A\r\nX-A: 1\r\n\r\n"), true, uint16(2), uint8(200))
	f.Fuzz(func(t *testing.T, in []byte, head bool, chunk uint16, room uint8) {
		want, wantRes, wantConsumed, wantErr := blockingRelay(in, head)
		out, res, consumed, err := stepRelay(in, head, int(chunk)+1, int(room)+1)
		if (err != nil) != (wantErr != nil) || res.Started != wantRes.Started {
			t.Fatalf("%q: step by step: started %v, %v; blocking: started %v, %v", in, res.Started, err, wantRes.Started, wantErr)
		}
		if err != nil {
			return
		}
		if !bytes.Equal(out, want) || res != wantRes || consumed != wantConsumed {
			t.Fatalf("%q: step by step wrote %q (%+v, took %d); blocking %q (%+v, took %d)",
				in, out, res, consumed, want, wantRes, wantConsumed)
		}
		method := "GET"
		if head {
			method = "HEAD"
		}
		br := bufio.NewReader(bytes.NewReader(out))
		for {
			r, err := http.ReadResponse(br, &http.Request{Method: method})
			if err != nil {
				t.Fatalf("relayed %q as %q, which does not read back: %v", in, out, err)
			}
			_, err = io.Copy(io.Discard, r.Body)
			if err != nil && !(res.ClientClose && err == io.ErrUnexpectedEOF) {
				t.Fatalf("relayed %q as %q: body: %v", in, out, err)
			}
			if r.StatusCode >= 200 {
				break
			}
		}
	})
}
