package server

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	goruntime "runtime"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/runtime"
	"github.com/berthhq/berth/store"
	"golang.org/x/sys/unix"
)

// pollInterval is how often a backend is polled for readiness while its
// start is fresh: every 100 µs times the number of backends starting at
// once, so many at once cost the machine no more than about 10,000
// attempts per second in all, which would otherwise take CPU from the very
// starts they wait for. In an otherwise idle server a wait under a
// millisecond lasts ~1.1 ms (Go's timers wake an idle process through a
// poller that waits in whole milliseconds). Waiting 100 µs exactly, in the
// kernel, was measured and dropped: four to five times the attempts and no
// start seen sooner, as they take CPU from the starting backend.
func (m *Manager) pollInterval() time.Duration {
	return time.Duration(max(1, m.starting.Load())) * 100 * time.Microsecond
}

// ProbeConnReuser takes over a connection on which a readiness probe's GET /
// was answered; br holds what was read of the answer. proxy.Proxy.Keep is
// one.
type ProbeConnReuser func(addr string, c net.Conn, br *bufio.Reader)

// pollReady returns nil once something answers HTTP at addr: every
// interval() for the first 50 ms (a refused connection costs microseconds),
// then with a backoff up to 5 ms. keep, if not nil, gets the connection
// that was answered.
func pollReady(ctx context.Context, addr string, interval func() time.Duration, keep ProbeConnReuser) error {
	p := newProbe(addr, keep)
	start := time.Now()
	wait := interval()
	var t *time.Timer
	for {
		if p.answersHTTP(ctx) {
			return nil
		}
		if t == nil {
			t = time.NewTimer(wait)
			defer t.Stop()
		} else {
			t.Reset(wait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		// Poll tightly while a fast starter is likely to come up, so its
		// start is not rounded up to the next poll; then back off.
		if time.Since(start) <= 50*time.Millisecond {
			wait = interval()
		} else {
			wait = min(max(wait, 200*time.Microsecond)*3/2, 5*time.Millisecond)
		}
	}
}

// probe asks one address whether it serves HTTP yet.
type probe struct {
	addr string
	ap   netip.AddrPort // invalid when addr is not an IP and port
	req  []byte
	d    net.Dialer
	keep ProbeConnReuser
}

func newProbe(addr string, keep ProbeConnReuser) *probe {
	ap, _ := netip.ParseAddrPort(addr)
	conn := "Connection: close\r\n"
	if keep != nil {
		conn = ""
	}
	return &probe{
		addr: addr,
		ap:   ap,
		req:  []byte("GET / HTTP/1.1\r\nHost: " + addr + "\r\nUser-Agent: berth-readiness\r\n" + conn + "\r\n"),
		d:    net.Dialer{Timeout: time.Second},
		keep: keep,
	}
}

// answersHTTP sends a request on a new connection and reports whether an
// HTTP response (any status) starts to come back. A plain connection, not
// an http.Client: most attempts are refused, and each should cost no more
// than the connect. An answered connection goes to p.keep, if set.
func (p *probe) answersHTTP(ctx context.Context) bool {
	c, err := p.dial(ctx)
	if err != nil {
		return false
	}
	deadline := time.Now().Add(2 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	c.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	if _, err := c.Write(p.req); err != nil {
		stop()
		c.Close()
		return false
	}
	// "HTTP/1.1 200": the status line is all that is needed.
	br := bufio.NewReaderSize(c, 4<<10)
	head, err := br.Peek(12)
	ok := err == nil && bytes.HasPrefix(head, []byte("HTTP/1.")) && head[8] == ' '
	if !stop() || !ok || p.keep == nil {
		c.Close()
		return ok
	}
	c.SetDeadline(time.Time{})
	p.keep(p.addr, c, br)
	return true
}

func (p *probe) dial(ctx context.Context) (net.Conn, error) {
	if p.ap.IsValid() {
		if c, err := connectNow(p.ap); err != errNotYet {
			return c, err
		}
	}
	return p.d.DialContext(ctx, "tcp", p.addr)
}

// errNotYet is connectNow's answer when the outcome of a connect is not
// known at once.
var errNotYet = errors.New("connect still in progress")

// connectNow connects to ap with a non-blocking connect and a poll that does
// not wait, and returns errNotYet when the outcome is not known yet (the
// caller then dials as usual). To a local address (loopback, a container
// on a local bridge) the outcome is known at once, so a refused attempt
// costs five system calls, where net.Dialer also registers the socket with
// the poller and parks the goroutine.
func connectNow(ap netip.AddrPort) (net.Conn, error) {
	var (
		domain int
		sa     unix.Sockaddr
	)
	switch a := ap.Addr().Unmap(); {
	case a.Is4():
		domain, sa = unix.AF_INET, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: a.As4()}
	case a.Is6() && a.Zone() == "":
		domain, sa = unix.AF_INET6, &unix.SockaddrInet6{Port: int(ap.Port()), Addr: a.As16()}
	default:
		return nil, errNotYet
	}
	fd, err := unix.Socket(domain, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, errNotYet
	}
	err = unix.Connect(fd, sa)
	if err == unix.EINPROGRESS {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		if n, perr := unix.Poll(pfd, 0); perr != nil || n == 0 {
			unix.Close(fd)
			return nil, errNotYet
		}
		soerr, gerr := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
		switch {
		case gerr != nil:
			err = gerr
		case soerr != 0:
			err = unix.Errno(soerr)
		default:
			err = nil
		}
	}
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	// Connected: hand the socket to the runtime's poller for the request.
	f := os.NewFile(uintptr(fd), "readiness probe")
	c, err := net.FileConn(f)
	f.Close()
	return c, err
}

// readiness is a readiness probe in flight: pollReady in a goroutine of its
// own, which opens the route to the backend once it answers (see
// probeReady).
type readiness struct {
	done    chan error // the probe's outcome, once
	cancel  context.CancelFunc
	started time.Time
	readyAt time.Time // when the backend answered; set before done gets nil
}

// closedGate is a gate that is open: for probes with nothing to wait for.
var closedGate = func() <-chan struct{} { c := make(chan struct{}); close(c); return c }()

// probeReady starts polling h.Addr for inst within the spawn's startup
// timeout. The route to the backend opens once the backend has answered
// and recorded is closed: a fresh start's probe runs while its start and
// handle are being written, but no traffic reaches a backend whose start
// is not durable (lifecycle.go, start). A probe cancelled before recorded
// closes ends with ctx's error and hands no connection to the proxy.
func (m *Manager) probeReady(ctx context.Context, inst *instance, b *berth.Backend, h *runtime.Handle, recorded <-chan struct{}) *readiness {
	rctx, cancel := context.WithTimeout(ctx, b.Spawn.StartupTimeout())
	r := &readiness{done: make(chan error, 1), cancel: cancel, started: time.Now()}
	m.starting.Add(1)
	go func() {
		defer m.starting.Add(-1)
		err := pollReady(rctx, h.Addr, m.pollInterval, m.probeConnReuser(rctx, inst, recorded))
		if err == nil && testHookAnswered != nil {
			testHookAnswered(inst)
		}
		if err == nil {
			// A probe cancelled after the record (a stop, an exit) still
			// opens the route: the history records ready before the stop.
			select {
			case <-recorded:
			default:
				select {
				case <-recorded:
				case <-rctx.Done():
					err = rctx.Err()
				}
			}
		}
		if err == nil {
			// The backend answers: route to it at once, from here, and let
			// the requests that were waiting for it go out before this
			// goroutine or the one recording ready takes the CPU back.
			// ready is recorded after; a crash in between leaves the
			// backend starting with a live handle, which Reconcile
			// re-adopts and polls again.
			r.readyAt = time.Now().UTC()
			inst.lastActive.Store(monoNow())
			inst.markAnswered()
			goruntime.Gosched()
		}
		r.done <- err
	}()
	return r
}

// awaitReady waits for the probe rd to find the backend answering HTTP. It
// returns false when the backend ended instead (already driven to
// terminated).
func (m *Manager) awaitReady(ctx context.Context, inst *instance, b *berth.Backend, h *runtime.Handle, rd *readiness, exitC chan runtime.Exit, log *slog.Logger) bool {
	defer rd.cancel()
	ready := func() {
		m.transition(inst, store.Transition{To: berth.StateReady, At: rd.readyAt})
		inst.markReadyRecorded()
		m.cfg.Metrics.startup.Observe(time.Since(rd.started).Seconds())
	}
	// A backend the probe found answering may already be routed to, have
	// served requests and been told to stop by a client that saw them.
	// So after a stop or an exit the probe's answer is still awaited (once
	// cancelled it comes at once) and a yes is recorded as ready first:
	// the history never skips ready.
	readyIfAnswered := func() {
		if <-rd.done == nil {
			ready()
		}
	}
	select {
	case err := <-rd.done:
		if err != nil {
			if ctx.Err() != nil {
				return true // shutting down; supervise sees the stop
			}
			cause := startupTimeoutMessage(h.Addr, b.Spawn.StartupTimeout(), m.outputTail(inst.id, startupTailLines))
			log.Warn("startup timeout", "after", b.Spawn.StartupTimeout(), "cause", cause)
			m.stopAndTerminate(inst, h, exitC, berth.ReasonStartupTimeout, false, cause, log)
			return false
		}
		ready()
		return true
	case e := <-exitC:
		rd.cancel()
		readyIfAnswered()
		m.exited(inst, h, e, log)
		return false
	case <-inst.stopC:
		rd.cancel()
		readyIfAnswered()
		why, hard := inst.stopRequest()
		m.stopAndTerminate(inst, h, exitC, why, hard, "", log)
		return false
	}
}

// startupTailLines is how much of its output a backend that timed out at
// startup has in its history: enough for the line that says where it
// listens instead.
const startupTailLines = 5

// startupTimeoutMessage says why a backend timed out at startup, in the
// words of the contract a program must keep: serve HTTP on $PORT.
func startupTimeoutMessage(addr string, timeout time.Duration, output string) string {
	port := addr
	if _, p, err := net.SplitHostPort(addr); err == nil {
		port = p
	}
	msg := fmt.Sprintf("nothing answered HTTP on $PORT (%s, probed at %s) within %gs: the program must serve HTTP on the port Berth passes in $PORT", port, addr, timeout.Seconds())
	if output == "" {
		return msg + "; it printed nothing"
	}
	return msg + "; its last output:\n" + output
}

// testHookAnswered, when set by a test, runs once a starting backend has
// answered its probe, before the route opens (and, for a fresh start,
// perhaps before the start is recorded).
var testHookAnswered func(*instance)

// probeConnReuser returns what takes inst's readiness probe's connection: the proxy gets
// the answered connection only while a request it can carry (a plain GET
// or HEAD, proxy.Pooled) waits for the backend, so a backend that no such
// request waits for leaves no idle connection behind; and only once
// recorded is closed (see probeReady), never when ctx ends first.
func (m *Manager) probeConnReuser(ctx context.Context, inst *instance, recorded <-chan struct{}) ProbeConnReuser {
	keep := m.cfg.ReuseProbeConn
	if keep == nil {
		return nil
	}
	return func(addr string, c net.Conn, br *bufio.Reader) {
		select {
		case <-recorded:
		case <-ctx.Done():
			c.Close()
			return
		}
		if inst.waiting.Load() == 0 {
			c.Close()
			return
		}
		keep(addr, c, br)
	}
}
