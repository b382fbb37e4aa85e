package replicas

import (
	"io"
	"net"
	"net/url"
	"sync"
	"testing"
)

// relay forwards TCP connections to a server until it is cut: then it
// forwards nothing, in either direction, and leaves connections open and
// silent, as a network partition does. heal closes what it held, so the
// clients reconnect, and forwards again.
type relay struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	cut   bool
	conns []net.Conn
}

func newRelay(t *testing.T, target string) *relay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{ln: ln, target: target}
	go r.serve()
	t.Cleanup(func() { ln.Close(); r.closeAll() })
	return r
}

func (r *relay) serve() {
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.mu.Lock()
		r.conns = append(r.conns, c)
		cut := r.cut
		r.mu.Unlock()
		if cut {
			continue // held open, never answered
		}
		go r.pipe(c)
	}
}

func (r *relay) pipe(c net.Conn) {
	s, err := net.Dial("tcp", r.target)
	if err != nil {
		c.Close()
		return
	}
	r.mu.Lock()
	r.conns = append(r.conns, s)
	r.mu.Unlock()
	go r.copy(s, c)
	r.copy(c, s)
}

// copy copies until either side fails, or until the relay is cut: then it
// stops moving bytes but closes nothing.
func (r *relay) copy(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		r.mu.Lock()
		cut := r.cut
		r.mu.Unlock()
		if cut {
			return
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			if err != io.EOF {
				break
			}
			break
		}
	}
	dst.Close()
	src.Close()
}

// partition stops all traffic through the relay.
func (r *relay) partition() {
	r.mu.Lock()
	r.cut = true
	r.mu.Unlock()
}

// heal closes the connections the partition held and forwards again.
func (r *relay) heal() {
	r.mu.Lock()
	r.cut = false
	r.mu.Unlock()
	r.closeAll()
}

func (r *relay) closeAll() {
	r.mu.Lock()
	conns := r.conns
	r.conns = nil
	r.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

// via returns the PostgreSQL URL u with its host replaced by the relay's.
func (r *relay) via(t *testing.T, u string) string {
	t.Helper()
	p, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	p.Host = r.ln.Addr().String()
	return p.String()
}

// pgAddr is the host:port of PostgreSQL URL u.
func pgAddr(t *testing.T, u string) string {
	t.Helper()
	p, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	return p.Host
}
