package proxy

import (
	"bufio"
	"bytes"
	"testing"
)

// stepRelay feeds in to a relayStep the way the event loop does: through
// a backend buffer of backendReadSize, chunk bytes per read, with at
// most room body bytes buffered for the client between writes.
func stepRelay(in []byte, headReq bool, chunk, room int) (out []byte, res relayed, consumed int, err error) {
	var r relayStep
	r.reset(headReq)
	buf := make([]byte, backendReadSize)
	var ob outBuf
	start, end, pos := 0, 0, 0
	eof := false
	for {
		used, wantIn, ferr := r.feed(buf[start:end], &ob, room-len(ob.b), len(buf), eof)
		start += used
		if ferr != nil || r.done() {
			return append(out, ob.b...), r.res, pos - (end - start), ferr
		}
		out, ob.b = append(out, ob.b...), ob.b[:0] // the client took it
		if !wantIn {
			continue
		}
		if eof {
			panic("feed wants input after EOF")
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

func TestRelayStep(t *testing.T) {
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
	} {
		for _, chunk := range []int{1, 3, 1 << 20} {
			out, res, consumed, err := stepRelay([]byte(tt.in), tt.head, chunk, 2)
			if err != nil || string(out) != tt.want || res.backendReusable != tt.reusable || consumed != len(tt.in) {
				t.Errorf("%s, %d-byte reads: %q reusable %v consumed %d, %v; want %q reusable %v consumed all",
					tt.name, chunk, out, res.backendReusable, consumed, err, tt.want, tt.reusable)
			}
		}
	}
}

// FuzzRelayStep checks the event loop's relay against relayResponse: the
// same bytes for the client, the same outcome, and the same bytes taken
// from the backend, however the backend's bytes are split.
func FuzzRelayStep(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"), false, uint16(1), uint8(1))
	f.Add([]byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"), false, uint16(7), uint8(3))
	f.Add([]byte("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.0 200 OK\r\n\r\nrest"), false, uint16(300), uint8(0))
	f.Add([]byte("HTTP/1.1 304 Not Modified\r\nConnection: X-A\r\nX-A: 1\r\n\r\n"), true, uint16(2), uint8(200))
	f.Fuzz(func(t *testing.T, in []byte, head bool, chunk uint16, room uint8) {
		var want bytes.Buffer
		bw := bufio.NewWriter(&want)
		rd := bytes.NewReader(in)
		br := bufio.NewReaderSize(rd, backendReadSize)
		wantRes, wantErr := relayResponse(bw, br, head, false)
		bw.Flush()
		wantConsumed := len(in) - rd.Len() - br.Buffered()

		out, res, consumed, err := stepRelay(in, head, int(chunk)+1, int(room)+1)
		if (err != nil) != (wantErr != nil) || res.started != wantRes.started {
			t.Fatalf("%q: step relay: started %v, %v; relayResponse: started %v, %v", in, res.started, err, wantRes.started, wantErr)
		}
		if err != nil {
			return
		}
		if !bytes.Equal(out, want.Bytes()) || res != wantRes || consumed != wantConsumed {
			t.Fatalf("%q: step relay wrote %q (%+v, took %d); relayResponse %q (%+v, took %d)",
				in, out, res, consumed, want.Bytes(), wantRes, wantConsumed)
		}
	})
}
