package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
)

// claimSeen is what a claim backend saw on one connection: the body bytes
// that came before the rest was sent, the whole body (or what came before
// the connection ended) and whether it was whole.
type claimSeen struct {
	before, body []byte
	whole        bool
}

// newClaimBackend answers claims as a pooled backend would, reporting for
// each connection what came when: a claim's head is read, then whatever
// of the body arrives within settle (what was sent before the rest),
// then the rest. A whole claim is answered 204; a GET after it, 200. The
// first cut connections are closed before the rest, as by a backend's
// read timeout.
func newClaimBackend(t *testing.T, settle time.Duration, cut int) (addr string, seen <-chan claimSeen) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ch := make(chan claimSeen, 8)
	go func() {
		for i := 0; ; i++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			cutThis := i < cut
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				var s claimSeen
				buf := make([]byte, 64<<10)
				c.SetReadDeadline(time.Now().Add(settle))
				for int64(len(s.before)) < req.ContentLength {
					n, err := br.Read(buf[:min(int64(len(buf)), req.ContentLength-int64(len(s.before)))])
					s.before = append(s.before, buf[:n]...)
					if err != nil {
						break
					}
				}
				c.SetReadDeadline(time.Time{})
				s.body = append([]byte(nil), s.before...)
				if cutThis {
					ch <- s
					return
				}
				rest := make([]byte, req.ContentLength-int64(len(s.body)))
				n, err := io.ReadFull(br, rest)
				s.body = append(s.body, rest[:n]...)
				s.whole = err == nil
				ch <- s
				if !s.whole {
					return
				}
				io.WriteString(c, "HTTP/1.1 204 No Content\r\n\r\n")
				if _, err := http.ReadRequest(br); err == nil {
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				}
			}()
		}
	}()
	return ln.Addr().String(), ch
}

func claimManager(kept chan<- net.Conn) *Manager {
	return &Manager{
		pools: &pools{conns: make(map[string]net.Conn)},
		cfg:   Config{KeepClaimConn: func(_ string, c net.Conn) { kept <- c }},
	}
}

func claimInstance(t *testing.T, m *Manager, addr string, mode berth.StateMode) *instance {
	t.Helper()
	b := &berth.Backend{ID: "bk_1", Pool: "web", Secret: "s3cret-s3cret", State: berth.StateReady}
	b.Spawn.State.Mode = mode
	inst := newInstance(b, nil)
	inst.addr = addr
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	m.pools.conns[b.ID] = c // as predial leaves it
	return inst
}

func recv[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatal("timed out")
		panic("unreachable")
	}
}

// A claim goes out in two parts: before the store's write, its head and
// a start of the body that tells nothing of the key; after it, the rest.
// A claim whose write failed is cut off there; one answered 2xx leaves
// its connection to the proxy, reusable.
func TestManager_ClaimInTwoParts(t *testing.T) {
	secrets := []string{"doc-1", "bob", "s3cret-s3cret", "fencing_token", "state_url"}
	claim := api.ClaimRequest{BackendID: "bk_1", Pool: "web", Key: "doc-1", User: "bob", FencingToken: 7, Secret: "s3cret-s3cret"}

	t.Run("answered", func(t *testing.T) {
		addr, seen := newClaimBackend(t, 200*time.Millisecond, 0)
		kept := make(chan net.Conn, 1)
		m := claimManager(kept)
		inst := claimInstance(t, m, addr, berth.StateModeNone)
		call := m.openClaim(inst, claim.Key, claim.User)
		if call == nil {
			t.Fatal("openClaim sent nothing on the pre-dialled connection")
		}
		time.Sleep(300 * time.Millisecond) // the store's write
		body, _ := json.Marshal(&claim)
		status, msg, err := m.finishClaim(t.Context(), call, addr, claimToken("s3cret-s3cret"), body)
		if err != nil || status != http.StatusNoContent {
			t.Fatalf("finishClaim = %d %q, %v; want 204", status, msg, err)
		}
		s := recv(t, seen)
		if want := `{"backend_id":"bk_1","pool":"web",`; string(s.before) != want {
			t.Errorf("before the store's write the backend had %q; want %q", s.before, want)
		}
		for _, x := range secrets {
			if bytes.Contains(s.before, []byte(x)) {
				t.Errorf("before the store's write the backend had %q, which tells %q", s.before, x)
			}
		}
		var got api.ClaimRequest
		if err := json.Unmarshal(s.body, &got); err != nil || !s.whole || got != claim {
			t.Errorf("the backend got %q (whole %v): %+v, %v; want %+v", s.body, s.whole, got, err, claim)
		}
		// The connection went to the proxy, and carries a request.
		c := recv(t, kept)
		defer c.Close()
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		if res, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil || res.StatusCode != http.StatusOK {
			t.Errorf("a request on the kept connection: %v, %v; want 200", res, err)
		}
		select {
		case s := <-seen:
			t.Errorf("the claim went out again: %+v", s)
		default:
		}
	})

	t.Run("write failed", func(t *testing.T) {
		addr, seen := newClaimBackend(t, 200*time.Millisecond, 0)
		m := claimManager(make(chan net.Conn, 1))
		call := m.openClaim(claimInstance(t, m, addr, berth.StateModeNone), claim.Key, claim.User)
		time.Sleep(300 * time.Millisecond) // the store's write
		call.abort()
		s := recv(t, seen)
		if s.whole {
			t.Fatalf("an aborted claim reached the backend whole: %q", s.body)
		}
		for _, x := range secrets {
			if bytes.Contains(s.body, []byte(x)) {
				t.Errorf("the backend of an aborted claim had %q, which tells %q", s.body, x)
			}
		}
	})

	t.Run("state URL longer than the room", func(t *testing.T) {
		addr, seen := newClaimBackend(t, 50*time.Millisecond, 0)
		m := claimManager(make(chan net.Conn, 1))
		call := m.openClaim(claimInstance(t, m, addr, berth.StateModeBlob), claim.Key, claim.User)
		long := claim
		long.StateURL = "http://127.0.0.1:1/" + strings.Repeat("s", 2*maxStateURL)
		body, _ := json.Marshal(&long)
		status, _, err := m.finishClaim(t.Context(), call, addr, claimToken("s3cret-s3cret"), body)
		if err != nil || status != http.StatusNoContent {
			t.Fatalf("finishClaim = %d, %v; want 204", status, err)
		}
		// Two connections, reported in either order: the first cut off
		// after the start, the second with the whole claim.
		a, b := recv(t, seen), recv(t, seen)
		if a.whole {
			a, b = b, a
		}
		if a.whole || string(a.body) != `{"backend_id":"bk_1","pool":"web",` {
			t.Errorf("the first connection got %q (whole %v); want the start only", a.body, a.whole)
		}
		var got api.ClaimRequest
		if !b.whole || json.Unmarshal(b.body, &got) != nil || got != long {
			t.Errorf("the claim sent again got %q (whole %v); want %+v", b.body, b.whole, long)
		}
	})

	t.Run("backend closed the kept connection", func(t *testing.T) {
		addr, seen := newClaimBackend(t, 50*time.Millisecond, 1)
		m := claimManager(make(chan net.Conn, 1))
		call := m.openClaim(claimInstance(t, m, addr, berth.StateModeNone), claim.Key, claim.User)
		// The backend leaves the connection mid-body, as one with a
		// read timeout would: the claim is sent whole on another.
		if s := recv(t, seen); s.whole {
			t.Fatalf("the cut connection got the claim whole: %q", s.body)
		}
		body, _ := json.Marshal(&claim)
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		status, _, err := m.finishClaim(ctx, call, addr, claimToken("s3cret-s3cret"), body)
		if err != nil || status != http.StatusNoContent {
			t.Fatalf("finishClaim = %d, %v; want 204", status, err)
		}
		var got api.ClaimRequest
		if s := recv(t, seen); !s.whole || json.Unmarshal(s.body, &got) != nil || got != claim {
			t.Errorf("the claim sent again got %q (whole %v); want %+v", s.body, s.whole, claim)
		}
	})
}
