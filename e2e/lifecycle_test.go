package e2e

import (
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
	"github.com/coder/websocket"
)

// slack absorbs the few milliseconds between a server's timer firing and
// the event's timestamp, and wall-clock rounding, in lower-bound checks.
const slack = 20 * time.Millisecond

// TestLifecycle: every way a backend ends, with its reason and exit code,
// and the timing guarantees the issue names (idle within 1s of the
// deadline, grace respected, hard terminate at once).
func TestLifecycle(t *testing.T) {
	t.Parallel()
	s := start(t, opts{})

	t.Run("idle", func(t *testing.T) {
		t.Parallel()
		sp := tb(nil)
		sp.MaxIdleSeconds = ptr(2)
		c := s.spawnReady(t, "idle", sp)
		before := time.Now()
		echo(t, c.URL, "", nil) // the last activity
		after := time.Now()
		b := s.waitTerminated(t, c.BackendID, 10*time.Second)
		if b.Reason != berth.ReasonIdle {
			t.Fatalf("reason %q, want idle", b.Reason)
		}
		stop := eventAt(t, s.history(t, c.BackendID), berth.StateTerminating)
		if early := before.Add(2 * time.Second).Sub(stop); early > slack {
			t.Errorf("idle stop %v before the deadline (2s after the last request)", early)
		}
		if late := stop.Sub(after.Add(2 * time.Second)); late > time.Second {
			t.Errorf("idle stop %v after the deadline, want within 1s", late)
		}
	})

	t.Run("open websocket keeps it alive", func(t *testing.T) {
		t.Parallel()
		sp := demo()
		sp.MaxIdleSeconds = ptr(2)
		c := s.spawnReady(t, "idle-ws", sp)
		ctx := testCtx(t, 30*time.Second)
		conn := dialWS(t, ctx, c.URL)
		opened := time.Now()
		// Well past the idle deadline, with no request but the open socket.
		<-time.After(time.Until(opened.Add(3500 * time.Millisecond)))
		if b := s.backend(t, c.BackendID); b.State != berth.StateReady {
			t.Fatalf("with a WebSocket open for 3.5s: state %q reason %q, want still ready (max_idle_seconds 2)", b.State, b.Reason)
		}
		// The socket works, too.
		wsRoundTrip(t, ctx, conn, "still here")
		closing := time.Now()
		conn.Close(websocket.StatusNormalClosure, "")
		closed := time.Now()
		b := s.waitTerminated(t, c.BackendID, 10*time.Second)
		if b.Reason != berth.ReasonIdle {
			t.Fatalf("reason %q, want idle", b.Reason)
		}
		stop := eventAt(t, s.history(t, c.BackendID), berth.StateTerminating)
		if early := closing.Add(2 * time.Second).Sub(stop); early > slack {
			t.Errorf("idle stop %v before the deadline (2s after the WebSocket closed)", early)
		}
		if late := stop.Sub(closed.Add(2 * time.Second)); late > time.Second {
			t.Errorf("idle stop %v after the deadline (2s after the WebSocket closed), want within 1s", late)
		}
	})

	t.Run("long request keeps it alive", func(t *testing.T) {
		t.Parallel()
		sp := tb(nil)
		sp.MaxIdleSeconds = ptr(1)
		c := s.spawnReady(t, "idle-long-request", sp)
		// One request in flight for 3 s, three idle deadlines long: the
		// backend must not be stopped under it.
		resp, body := get(t, c.URL+"sleep?ms=3000", nil)
		answered := time.Now()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("a request slower than max_idle_seconds: %d %s, want 200 (the backend stopped under it?)", resp.StatusCode, body)
		}
		if b := s.backend(t, c.BackendID); b.State != berth.StateReady {
			t.Fatalf("right after a 3 s request: state %q reason %q, want still ready (max_idle_seconds 1)", b.State, b.Reason)
		}
		b := s.waitTerminated(t, c.BackendID, 10*time.Second)
		if b.Reason != berth.ReasonIdle {
			t.Fatalf("reason %q, want idle", b.Reason)
		}
		stop := eventAt(t, s.history(t, c.BackendID), berth.StateTerminating)
		if late := stop.Sub(answered.Add(time.Second)); late > time.Second {
			t.Errorf("idle stop %v after the deadline (1s after the request ended), want within 1s", late)
		}
	})

	t.Run("lifetime", func(t *testing.T) {
		t.Parallel()
		sp := demo()
		sp.LifetimeSeconds = 2
		sp.MaxIdleSeconds = ptr(0) // never idle: only the lifetime ends it
		c := s.spawnReady(t, "lifetime", sp)
		// Activity does not extend a lifetime.
		ctx := testCtx(t, 30*time.Second)
		conn := dialWS(t, ctx, c.URL)
		conn.CloseRead(ctx) // answer the server's close handshake when it stops
		b := s.waitTerminated(t, c.BackendID, 10*time.Second)
		if b.Reason != berth.ReasonLifetime {
			t.Fatalf("reason %q, want lifetime", b.Reason)
		}
		stop := eventAt(t, s.history(t, c.BackendID), berth.StateTerminating)
		if age := stop.Sub(b.CreatedAt); age < 2*time.Second-slack || age > 3*time.Second {
			t.Errorf("stopped %v after creation, want 2s (lifetime_seconds) to 3s", age)
		}
	})

	t.Run("soft terminate waits for a clean exit", func(t *testing.T) {
		t.Parallel()
		sp := tb(map[string]string{"TB_TERM_DELAY_MS": "500"})
		sp.GraceSeconds = ptr(5)
		c := s.spawnReady(t, "soft", sp)
		s.terminate(t, c.BackendID, false)
		b := s.waitTerminated(t, c.BackendID, 10*time.Second)
		if b.Reason != berth.ReasonRequested || b.ExitCode == nil || *b.ExitCode != 0 {
			t.Fatalf("reason %q exit %v, want requested, exit 0", b.Reason, fmtCode(b.ExitCode))
		}
		evs := s.history(t, c.BackendID)
		if took := eventAt(t, evs, berth.StateTerminated).Sub(eventAt(t, evs, berth.StateTerminating)); took < 500*time.Millisecond-slack {
			t.Errorf("terminated %v after terminating; the backend needs 500ms to stop, so it was cut short", took)
		}
	})

	t.Run("soft terminate kills after grace", func(t *testing.T) {
		t.Parallel()
		sp := tb(map[string]string{"TB_IGNORE_SIGTERM": "1"})
		sp.GraceSeconds = ptr(1)
		c := s.spawnReady(t, "grace", sp)
		pids := mustPIDs(t, c.BackendID)
		s.terminate(t, c.BackendID, false)
		b := s.waitTerminated(t, c.BackendID, 10*time.Second)
		if b.Reason != berth.ReasonRequested {
			t.Errorf("reason %q, want requested", b.Reason)
		}
		if b.ExitCode != nil && *b.ExitCode == 0 {
			t.Errorf("exit code 0 for a backend that ignored SIGTERM and was killed")
		}
		evs := s.history(t, c.BackendID)
		took := eventAt(t, evs, berth.StateTerminated).Sub(eventAt(t, evs, berth.StateTerminating))
		if took < time.Second-slack {
			t.Errorf("killed %v after the stop signal, before grace_seconds (1s) ran out", took)
		}
		if took > 3*time.Second {
			t.Errorf("killed %v after the stop signal, want soon after grace_seconds (1s)", took)
		}
		for _, pid := range pids {
			waitGone(t, pid, 2*time.Second)
		}
	})

	t.Run("hard terminate kills at once", func(t *testing.T) {
		t.Parallel()
		sp := tb(map[string]string{"TB_IGNORE_SIGTERM": "1"})
		sp.GraceSeconds = ptr(30)
		c := s.spawnReady(t, "hard", sp)
		pids := mustPIDs(t, c.BackendID)
		s.terminate(t, c.BackendID, true)
		b := s.waitTerminated(t, c.BackendID, 10*time.Second)
		if b.Reason != berth.ReasonRequested {
			t.Errorf("reason %q, want requested", b.Reason)
		}
		evs := s.history(t, c.BackendID)
		if took := eventAt(t, evs, berth.StateTerminated).Sub(eventAt(t, evs, berth.StateTerminating)); took > 5*time.Second {
			t.Errorf("hard terminate took %v; it must not wait for grace_seconds (30s)", took)
		}
		for _, pid := range pids {
			waitGone(t, pid, 2*time.Second)
		}
	})

	t.Run("hard terminate cuts a soft one short", func(t *testing.T) {
		t.Parallel()
		sp := tb(map[string]string{"TB_IGNORE_SIGTERM": "1"})
		sp.GraceSeconds = ptr(30)
		c := s.spawnReady(t, "soft-then-hard", sp)
		s.terminate(t, c.BackendID, false)
		s.waitState(t, c.BackendID, berth.StateTerminating, 5*time.Second)
		hard := time.Now()
		s.terminate(t, c.BackendID, true)
		s.waitTerminated(t, c.BackendID, 10*time.Second)
		if took := time.Since(hard); took > 5*time.Second {
			t.Errorf("terminated %v after the hard terminate; it must not wait out the 30s grace", took)
		}
	})

	for _, hard := range []bool{false, true} {
		name := "soft"
		if hard {
			name = "hard"
		}
		t.Run("process group killed/"+name, func(t *testing.T) {
			t.Parallel()
			// The child ignores SIGTERM and is in the backend's process
			// group: only killing the group stops it.
			pidfile := filepath.Join(t.TempDir(), "child.pid")
			c := s.spawnReady(t, "group-"+name, tb(map[string]string{"TB_CHILD": "1", "TB_CHILD_PIDFILE": pidfile}))
			raw, err := os.ReadFile(pidfile)
			if err != nil {
				t.Fatalf("the test backend wrote no child pid: %v", err)
			}
			child, err := strconv.Atoi(string(raw))
			if err != nil || !alive(child) {
				t.Fatalf("child pid %q: %v, alive %v", raw, err, alive(child))
			}
			pids := waitPIDs(t, c.BackendID, 2)
			if !slices.Contains(pids, child) {
				t.Fatalf("child %d not among the backend's processes %v", child, pids)
			}
			s.terminate(t, c.BackendID, hard)
			s.waitTerminated(t, c.BackendID, 10*time.Second)
			for _, pid := range pids {
				waitGone(t, pid, 2*time.Second)
			}
		})
	}

	t.Run("terminate is idempotent", func(t *testing.T) {
		t.Parallel()
		c := s.spawnReady(t, "twice", tb(nil))
		s.terminate(t, c.BackendID, false)
		s.terminate(t, c.BackendID, false)
		s.waitTerminated(t, c.BackendID, 10*time.Second)
		s.terminate(t, c.BackendID, true) // already terminated: still 202
		if b := s.backend(t, c.BackendID); b.Reason != berth.ReasonRequested {
			t.Errorf("reason %q, want requested", b.Reason)
		}
	})

	exits := []struct {
		name   string
		env    map[string]string
		path   string // requested through the proxy to make it exit, if any
		reason berth.Reason
		code   int // -1: any non-zero or unknown
	}{
		{"exit 0 on its own", map[string]string{"TB_EXIT_AFTER_MS": "300", "TB_EXIT_CODE": "0"}, "", berth.ReasonExited, 0},
		{"exit 3 on its own", map[string]string{"TB_EXIT_AFTER_MS": "300", "TB_EXIT_CODE": "3"}, "", berth.ReasonCrashed, 3},
		{"exit 0 when asked", nil, "exit?code=0", berth.ReasonExited, 0},
		{"exit 7 when asked", nil, "exit?code=7", berth.ReasonCrashed, 7},
		{"crash", nil, "crash", berth.ReasonCrashed, 2}, // a Go panic exits 2
	}
	for _, tt := range exits {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := s.spawnReady(t, "", tb(tt.env))
			if tt.path != "" {
				req, _ := http.NewRequestWithContext(testCtx(t, 10*time.Second), http.MethodGet, c.URL+tt.path, nil)
				if resp, err := http.DefaultClient.Do(req); err == nil {
					resp.Body.Close() // the backend may die before answering
				}
			}
			b := s.waitTerminated(t, c.BackendID, 10*time.Second)
			if b.Reason != tt.reason {
				t.Errorf("reason %q, want %q", b.Reason, tt.reason)
			}
			switch {
			case tt.code >= 0 && (b.ExitCode == nil || *b.ExitCode != tt.code):
				t.Errorf("exit code %s, want %d", fmtCode(b.ExitCode), tt.code)
			case tt.code < 0 && b.ExitCode != nil && *b.ExitCode == 0:
				t.Errorf("exit code 0 for a crash")
			}
			// The event that ends the stream carries the same.
			evs := s.history(t, c.BackendID)
			last := evs[len(evs)-1]
			if last.State != berth.StateTerminated || last.Reason != tt.reason || fmtCode(last.ExitCode) != fmtCode(b.ExitCode) {
				t.Errorf("last event %+v (exit %s), want terminated/%s exit %s", last, fmtCode(last.ExitCode), tt.reason, fmtCode(b.ExitCode))
			}
		})
	}

	t.Run("startup timeout", func(t *testing.T) {
		t.Parallel()
		sp := tb(map[string]string{"TB_READY_DELAY_MS": "30000"})
		sp.StartupTimeoutSeconds = 1
		failed := s.connectFailed(t, api.ConnectRequest{Spawn: sp, Wait: true, WaitTimeoutSeconds: 20})
		b := s.waitTerminated(t, failed.BackendID, 10*time.Second)
		if b.Reason != berth.ReasonStartupTimeout {
			t.Fatalf("reason %q, want startup_timeout", b.Reason)
		}
		evs := s.history(t, b.ID)
		if slices.Contains(states(evs), berth.StateReady) {
			t.Errorf("history %v includes ready", states(evs))
		}
		if took := eventAt(t, evs, berth.StateTerminating).Sub(eventAt(t, evs, berth.StateStarting)); took < time.Second-slack {
			t.Errorf("gave up %v after starting, before startup_timeout_seconds (1s)", took)
		}
		if pids := backendPIDs(b.ID); len(pids) > 0 {
			t.Errorf("processes %v of the timed-out backend still run", pids)
		}
	})

	t.Run("spawn failed", func(t *testing.T) {
		t.Parallel()
		failed := s.connectFailed(t, api.ConnectRequest{Spawn: &berth.SpawnConfig{Command: []string{"/nonexistent/e2e-program"}}, Wait: true})
		b := s.waitTerminated(t, failed.BackendID, 10*time.Second)
		if b.Reason != berth.ReasonSpawnFailed {
			t.Errorf("reason %q, want spawn_failed", b.Reason)
		}
	})
}

func fmtCode(c *int) string {
	if c == nil {
		return "none"
	}
	return itoa(int64(*c))
}

// mustPIDs returns the backend's processes, failing if there are none.
func mustPIDs(t *testing.T, id string) []int {
	t.Helper()
	return waitPIDs(t, id, 1)
}

// waitPIDs polls until at least n processes run for backend id.
func waitPIDs(t *testing.T, id string, n int) []int {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		pids := backendPIDs(id)
		if len(pids) >= n {
			return pids
		}
		if time.Now().After(deadline) {
			t.Fatalf("backend %s: %d processes carry BERTH_BACKEND_ID (%v), want at least %d", id, len(pids), pids, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
