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
// path): a claim adds the store's write and one round trip to a warm
// connect, not a dial. The connection is closed after the answer: the
// proxy's first request to the backend goes out on its event loops, which
// keep connections of their own.

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
		cr := &claimReader{r: c}
		_, err := c.Write(req)
		var resp *http.Response
		if err == nil {
			resp, err = http.ReadResponse(bufio.NewReader(cr), &http.Request{Method: http.MethodPost})
		}
		if err != nil {
			stop()
			c.Close()
			if reused && cr.n == 0 && ctx.Err() == nil {
				// The kept connection was closed by the backend while it
				// waited (an idle timeout): nothing was answered, so ask
				// again on a new one.
				c = nil
				continue
			}
			return 0, nil, err
		}
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		stopped := stop()
		c.Close()
		if !stopped {
			return 0, nil, ctx.Err()
		}
		return resp.StatusCode, msg, nil
	}
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
