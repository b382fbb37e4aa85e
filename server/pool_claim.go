package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
)

// A claim is on the path of a connect, so its POST /.berth/claim goes out
// on a connection opened when the backend became ready (dialled off that
// path), and in two parts. The request's head and the start of its body,
// which says nothing of the key ({"backend_id":…,"pool":…,), go out before
// the store's write that gives the backend the key (openClaim): the
// backend wakes up, reads them and waits for the rest while that write
// commits. The rest — key, fencing token, secret, state URL — goes out
// only once the write has committed and the key's state is fenced
// (finishClaim): a backend cannot act on a key it has not been told, so
// when the write fails the connection is closed mid-body and the backend
// has learned nothing. Content-Length is fixed before the key's fencing
// token and state URL are known, so the body keeps room for the longest
// they can be, and what the rest leaves of it is JSON whitespace after
// the object.
//
// After a 2xx, the connection goes to the proxy (Config.KeepClaimConn):
// the key's first request to the backend needs no dial either.

// maxStateURL is the room a claim keeps for its state URL, known only
// once the key is fenced; a longer one sends the claim whole, after.
const maxStateURL = 1024

// predial opens the connection a claim of inst will use, and keeps it
// until then. Best effort: without one, the claim dials.
func (ps *pools) predial(inst *instance) {
	inst.mu.Lock()
	addr := inst.addr
	inst.mu.Unlock()
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.conns[inst.id] != nil || inst.state() != berth.StateReady {
		c.Close()
		return
	}
	ps.conns[inst.id] = c
}

// takeConn returns (and forgets) inst's pre-dialled connection, or nil.
func (ps *pools) takeConn(id string) net.Conn {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	c := ps.conns[id]
	delete(ps.conns, id)
	return c
}

// claimCall is a claim whose head and body's start went out (openClaim).
type claimCall struct {
	c      net.Conn
	prefix []byte // the body sent
	room   int    // the body still owed
}

// abort closes the call's connection mid-body: the backend learns
// nothing from it.
func (cc *claimCall) abort() {
	if cc != nil {
		cc.c.Close()
	}
}

// claimPrefix is the start of a claim's body for backend id of pool: what
// goes out before the store's write. encoding/json writes ClaimRequest's
// fields in this order, so it is also the start of the whole body.
func claimPrefix(id, pool string) []byte {
	p, _ := json.Marshal(struct {
		BackendID string `json:"backend_id"`
		Pool      string `json:"pool"`
	}{id, pool})
	return append(p[:len(p)-1], ',')
}

// claimHead is a claim's request head.
func claimHead(addr, token string, n int) []byte {
	return []byte("POST /.berth/claim HTTP/1.1\r\nHost: " + addr + "\r\nUser-Agent: berth\r\nContent-Type: application/json\r\n" +
		"Authorization: Bearer " + token + "\r\nContent-Length: " + strconv.Itoa(n) + "\r\n\r\n")
}

// openClaim sends, on inst's pre-dialled connection, the head of its
// claim for key and user and the start of the body. It returns nil when
// there is no such connection or the write fails: the claim then goes out
// whole (postClaim).
func (m *Manager) openClaim(inst *instance, key, user string) *claimCall {
	c := m.pools.takeConn(inst.id)
	if c == nil {
		return nil
	}
	b := inst.snapshot()
	inst.mu.Lock()
	addr := inst.addr
	inst.mu.Unlock()
	// The longest the body can be: the widest fencing token, and a state
	// URL of maxStateURL for a mode that may have one.
	longest := api.ClaimRequest{BackendID: b.ID, Pool: b.Pool, Key: key, User: user, FencingToken: math.MinInt64, Secret: b.Secret}
	if b.Spawn.StateMode() != berth.StateModeNone {
		longest.StateURL = strings.Repeat("x", maxStateURL)
	}
	full, _ := json.Marshal(&longest)
	prefix := claimPrefix(b.ID, b.Pool)
	if !bytes.HasPrefix(full, prefix) {
		c.Close()
		return nil
	}
	req := append(claimHead(addr, claimToken(b.Secret), len(full)), prefix...)
	c.SetWriteDeadline(time.Now().Add(time.Second))
	if _, err := c.Write(req); err != nil {
		c.Close()
		return nil
	}
	return &claimCall{c: c, prefix: prefix, room: len(full) - len(prefix)}
}

// finishClaim sends the rest of body, the whole claim, on cc and returns
// the backend's answer. A call whose body does not fit, or whose
// connection fails before any answer (the backend closed it meanwhile),
// is sent whole on a new connection instead.
func (m *Manager) finishClaim(ctx context.Context, cc *claimCall, addr, token string, body []byte) (int, []byte, error) {
	if cc == nil || !bytes.HasPrefix(body, cc.prefix) || len(body)-len(cc.prefix) > cc.room {
		cc.abort()
		return m.postClaim(ctx, addr, token, body, nil)
	}
	rest := make([]byte, cc.room)
	n := copy(rest, body[len(cc.prefix):])
	for i := n; i < len(rest); i++ {
		rest[i] = ' '
	}
	status, msg, answered, err := m.exchange(ctx, cc.c, addr, rest)
	if err != nil && !answered && ctx.Err() == nil {
		return m.postClaim(ctx, addr, token, body, nil)
	}
	return status, msg, err
}

// postClaim POSTs body to the backend's /.berth/claim at addr with token,
// on c (its pre-dialled connection) or a new one, and returns the
// answer's status and (the start of) its body.
func (m *Manager) postClaim(ctx context.Context, addr, token string, body []byte, c net.Conn) (int, []byte, error) {
	req := append(claimHead(addr, token, len(body)), body...)
	for {
		reused := c != nil
		if !reused {
			var d net.Dialer
			var err error
			if c, err = d.DialContext(ctx, "tcp", addr); err != nil {
				return 0, nil, err
			}
		}
		status, msg, answered, err := m.exchange(ctx, c, addr, req)
		if err != nil && reused && !answered && ctx.Err() == nil {
			// The kept connection was closed by the backend while it
			// waited (an idle timeout): nothing was answered, so ask
			// again on a new one.
			c = nil
			continue
		}
		return status, msg, err
	}
}

// exchange writes req on c, reads the answer, and closes c or, after a
// 2xx on a connection the backend keeps open, gives it to the proxy.
// answered says whether any of an answer came.
func (m *Manager) exchange(ctx context.Context, c net.Conn, addr string, req []byte) (status int, msg []byte, answered bool, err error) {
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	} else {
		c.SetDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	cr := &claimReader{r: c}
	br := bufio.NewReader(cr)
	var resp *http.Response
	if _, err = c.Write(req); err == nil {
		resp, err = http.ReadResponse(br, &http.Request{Method: http.MethodPost})
	}
	if err != nil {
		stop()
		c.Close()
		return 0, nil, cr.n > 0, err
	}
	msg, _ = io.ReadAll(io.LimitReader(resp.Body, 512))
	_, rerr := resp.Body.Read(nil)
	whole := rerr == io.EOF && br.Buffered() == 0 && !resp.Close
	resp.Body.Close()
	if !stop() {
		c.Close()
		return 0, nil, true, ctx.Err()
	}
	if keep := m.cfg.KeepClaimConn; keep != nil && whole && resp.StatusCode/100 == 2 {
		c.SetDeadline(time.Time{})
		keep(addr, c)
	} else {
		c.Close()
	}
	return resp.StatusCode, msg, true, nil
}

// claimReader counts what is read through it.
type claimReader struct {
	r io.Reader
	n int
}

func (r *claimReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.n += n
	return n, err
}

// claimError words a claim's refusal.
func claimError(status int, msg []byte) error {
	return fmt.Errorf("POST /.berth/claim: %d %s: %s", status, http.StatusText(status), bytes.TrimSpace(msg))
}
