package server

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/berthhq/berth"
)

// A claim is on the path of a connect, so its POST /.berth/claim goes out
// on a connection opened when the backend became ready (dialled off that
// path), and once answered the connection is handed to the proxy
// (Config.ReuseProbeConn), which sends the key's first request on it: a
// claim adds the store's write and one round trip to a warm connect,
// never a dial.

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

// recorder keeps what is read through it.
type recorder struct {
	r   io.Reader
	buf bytes.Buffer
}

func (r *recorder) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.buf.Write(p[:n])
	return n, err
}

// postClaim POSTs body to inst's /.berth/claim at addr with token, and
// returns the answer's status and (the start of) its body.
func (m *Manager) postClaim(ctx context.Context, id, addr, token string, body []byte) (int, []byte, error) {
	head := "POST /.berth/claim HTTP/1.1\r\nHost: " + addr + "\r\nUser-Agent: berth\r\nContent-Type: application/json\r\n" +
		"Authorization: Bearer " + token + "\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n"
	req := append([]byte(head), body...)
	c := m.pools.takeConn(id)
	for {
		reused := c != nil
		if !reused {
			var d net.Dialer
			var err error
			if c, err = d.DialContext(ctx, "tcp", addr); err != nil {
				return 0, nil, err
			}
		}
		if dl, ok := ctx.Deadline(); ok {
			c.SetDeadline(dl)
		}
		stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
		rec := &recorder{r: c}
		_, err := c.Write(req)
		var resp *http.Response
		if err == nil {
			resp, err = http.ReadResponse(bufio.NewReader(rec), &http.Request{Method: http.MethodPost})
		}
		if err != nil {
			stop()
			c.Close()
			if reused && rec.buf.Len() == 0 && ctx.Err() == nil {
				// The kept connection was closed by the backend while it
				// waited (an idle timeout): nothing was answered, so ask
				// again on a new one.
				c = nil
				continue
			}
			return 0, nil, err
		}
		msg, err := io.ReadAll(io.LimitReader(resp.Body, 512))
		full := err == nil && resp.ContentLength >= 0 && int64(len(msg)) == resp.ContentLength ||
			resp.StatusCode == http.StatusNoContent
		resp.Body.Close()
		if !stop() {
			c.Close()
			return 0, nil, ctx.Err()
		}
		c.SetDeadline(time.Time{})
		if keep := m.cfg.ReuseProbeConn; keep != nil && full && !resp.Close && resp.StatusCode/100 == 2 {
			// Keep checks that what was read is exactly one whole answer
			// after which the connection stays open.
			br := bufio.NewReader(bytes.NewReader(rec.buf.Bytes()))
			br.Peek(rec.buf.Len())
			keep(addr, c, br)
		} else {
			c.Close()
		}
		return resp.StatusCode, msg, nil
	}
}

// claimError words a claim's refusal.
func claimError(status int, msg []byte) error {
	return fmt.Errorf("POST /.berth/claim: %d %s: %s", status, http.StatusText(status), bytes.TrimSpace(msg))
}
