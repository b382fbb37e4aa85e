// Package benchbackend is the backend `berth bench` runs: an HTTP hello and a
// WebSocket echo on $PORT, small enough that what the bench measures is
// Berth and not the backend. It also holds the minimal WebSocket client the
// bench drives it with.
//
// It must stay standard library only and free of cgo: it is built as a
// static binary that also runs in a FROM scratch image.
package benchbackend

import (
	"bufio"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

var hello = []byte("hello\n")

// Handler serves:
//
//	GET /      200 "hello\n" with a Content-Length (the proxy benchmarks)
//	GET /port  the $PORT it listens on, so the bench can reach it directly
//	GET /pid   its process ID as it sees it, so the bench can meter its CPU
//	GET /ws    a WebSocket that echoes every frame back unchanged
//	POST /.berth/claim  204: a pooled backend's claim, accepted at once (it
//	           keeps no state to load)
func Handler() http.Handler {
	port := []byte(os.Getenv("PORT"))
	pid := []byte(strconv.Itoa(os.Getpid()))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ws":
			serveWS(w, r)
		case "/.berth/claim":
			w.WriteHeader(http.StatusNoContent)
		case "/port":
			w.Header()["Content-Type"] = []string{"text/plain"}
			w.Write(port)
		case "/pid":
			w.Header()["Content-Type"] = []string{"text/plain"}
			w.Write(pid)
		default:
			h := w.Header()
			h["Content-Type"] = []string{"text/plain"}
			h["Content-Length"] = []string{"6"}
			w.Write(hello)
		}
	})
}

// Main listens on $PORT on every interface (a container's port is reached
// from outside it) and serves Handler until the process is killed; the Go
// runtime's default SIGTERM handling is the stop. BENCH_STARTUP_DELAY_MS=N
// makes it wait N ms before it listens: a backend with a heavy start (the
// pool-connect scenario).
func Main() error {
	port := os.Getenv("PORT")
	if port == "" {
		return errors.New("benchbackend: $PORT is not set")
	}
	if ms, err := strconv.Atoi(os.Getenv("BENCH_STARTUP_DELAY_MS")); err == nil && ms > 0 {
		time.Sleep(time.Duration(ms) * time.Millisecond)
	}
	ln, err := net.Listen("tcp", ":"+port)
	if err != nil {
		return fmt.Errorf("benchbackend: %w", err)
	}
	return http.Serve(ln, Handler())
}

const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// AcceptKey is the Sec-WebSocket-Accept answer for a Sec-WebSocket-Key.
func AcceptKey(key string) string {
	h := sha1.Sum([]byte(key + wsGUID))
	return base64.StdEncoding.EncodeToString(h[:])
}

func serveWS(w http.ResponseWriter, r *http.Request) {
	key := r.Header.Get("Sec-Websocket-Key")
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") || key == "" {
		http.Error(w, "websocket upgrade required", http.StatusBadRequest)
		return
	}
	c, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer c.Close()
	brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ")
	brw.WriteString(AcceptKey(key))
	brw.WriteString("\r\n\r\n")
	if brw.Flush() != nil {
		return
	}
	var buf []byte
	for {
		f, err := ReadFrame(brw.Reader, buf[:0])
		if err != nil {
			return
		}
		buf = f.Payload
		op := f.Opcode
		switch op {
		case OpPing:
			op = OpPong
		case OpPong:
			continue
		}
		// Server frames are not masked.
		if err := WriteFrame(brw.Writer, f.Fin, op, f.Payload, false); err != nil || brw.Flush() != nil {
			return
		}
		if op == OpClose {
			return
		}
	}
}

// WebSocket opcodes.
const (
	OpContinuation = 0x0
	OpText         = 0x1
	OpBinary       = 0x2
	OpClose        = 0x8
	OpPing         = 0x9
	OpPong         = 0xA
)

// Frame is one WebSocket frame, unmasked.
type Frame struct {
	Fin     bool
	Opcode  byte
	Payload []byte
}

// maxPayload bounds a frame the echo accepts: it only ever sees the bench's.
const maxPayload = 1 << 20

// ReadFrame reads one frame, appending its unmasked payload to buf.
func ReadFrame(br *bufio.Reader, buf []byte) (Frame, error) {
	var hdr [14]byte
	if _, err := io.ReadFull(br, hdr[:2]); err != nil {
		return Frame{}, err
	}
	f := Frame{Fin: hdr[0]&0x80 != 0, Opcode: hdr[0] & 0x0f}
	masked := hdr[1]&0x80 != 0
	n := uint64(hdr[1] & 0x7f)
	switch n {
	case 126:
		if _, err := io.ReadFull(br, hdr[:2]); err != nil {
			return Frame{}, err
		}
		n = uint64(hdr[0])<<8 | uint64(hdr[1])
	case 127:
		if _, err := io.ReadFull(br, hdr[:8]); err != nil {
			return Frame{}, err
		}
		n = 0
		for _, b := range hdr[:8] {
			n = n<<8 | uint64(b)
		}
	}
	if n > maxPayload {
		return Frame{}, fmt.Errorf("websocket: frame of %d bytes is too large", n)
	}
	var mask [4]byte
	if masked {
		if _, err := io.ReadFull(br, mask[:]); err != nil {
			return Frame{}, err
		}
	}
	start := len(buf)
	buf = append(buf, make([]byte, n)...)
	p := buf[start:]
	if _, err := io.ReadFull(br, p); err != nil {
		return Frame{}, err
	}
	if masked {
		for i := range p {
			p[i] ^= mask[i&3]
		}
	}
	f.Payload = p
	return f, nil
}

// WriteFrame writes one frame. Clients must mask; the bench masks with an
// all-zero key, which is valid framing and leaves the payload as it is (it
// is not a defence against anything, which the bench does not need).
func WriteFrame(bw *bufio.Writer, fin bool, op byte, p []byte, mask bool) error {
	b0 := op
	if fin {
		b0 |= 0x80
	}
	var m byte
	if mask {
		m = 0x80
	}
	bw.WriteByte(b0)
	switch n := len(p); {
	case n < 126:
		bw.WriteByte(m | byte(n))
	case n < 1<<16:
		bw.WriteByte(m | 126)
		bw.WriteByte(byte(n >> 8))
		bw.WriteByte(byte(n))
	default:
		bw.WriteByte(m | 127)
		for s := 56; s >= 0; s -= 8 {
			bw.WriteByte(byte(uint64(n) >> s))
		}
	}
	if mask {
		bw.Write([]byte{0, 0, 0, 0})
	}
	_, err := bw.Write(p)
	return err
}

// WSConn is the client end of a WebSocket, for the bench.
type WSConn struct {
	net.Conn
	br  *bufio.Reader
	bw  *bufio.Writer
	buf []byte
}

// Handshake upgrades c (already connected to host) to a WebSocket on path.
// The buffers are small: the idle-WebSocket scenario holds thousands.
func Handshake(c net.Conn, host, path string) (*WSConn, error) {
	const key = "dGhlIHNhbXBsZSBub25jZQ==" // any 16 bytes; the bench needs no secrecy
	ws := &WSConn{Conn: c, br: bufio.NewReaderSize(c, 512), bw: bufio.NewWriterSize(c, 256)}
	fmt.Fprintf(ws.bw, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n", path, host, key)
	if err := ws.bw.Flush(); err != nil {
		return nil, err
	}
	res, err := http.ReadResponse(ws.br, nil)
	if err != nil {
		return nil, fmt.Errorf("websocket handshake: %w", err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusSwitchingProtocols {
		return nil, fmt.Errorf("websocket handshake: status %s", res.Status)
	}
	if got := res.Header.Get("Sec-Websocket-Accept"); got != AcceptKey(key) {
		return nil, fmt.Errorf("websocket handshake: bad Sec-WebSocket-Accept %q", got)
	}
	return ws, nil
}

// Echo sends p as one binary frame and reads the echo back.
func (ws *WSConn) Echo(p []byte) error {
	if err := WriteFrame(ws.bw, true, OpBinary, p, true); err != nil {
		return err
	}
	if err := ws.bw.Flush(); err != nil {
		return err
	}
	f, err := ReadFrame(ws.br, ws.buf[:0])
	if err != nil {
		return err
	}
	ws.buf = f.Payload
	if f.Opcode != OpBinary || len(f.Payload) != len(p) {
		return fmt.Errorf("websocket echo: got opcode %d with %d bytes, want %d with %d", f.Opcode, len(f.Payload), OpBinary, len(p))
	}
	return nil
}
