package e2e

import (
	"net/http"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
)

// TestRestartAfterSIGKILL: berth killed with SIGKILL and started again on the
// same data dir re-adopts the backends that still run and records the ones
// that died meanwhile as lost; nothing runs unaccounted for.
func TestRestartAfterSIGKILL(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s1 := start(t, opts{dataDir: dir})

	survivor := s1.spawnReady(t, "survivor", tb(nil))
	victim := s1.spawnReady(t, "victim", tb(nil))
	quitter := s1.spawnReady(t, "quitter", tb(nil))
	survivorPIDs := mustPIDs(t, survivor.BackendID)
	victimPIDs := mustPIDs(t, victim.BackendID)
	quitterPIDs := mustPIDs(t, quitter.BackendID)

	s1.kill()
	// Backends run in their own process groups: berth's death alone does
	// not take them down.
	for _, pid := range slices.Concat(survivorPIDs, victimPIDs, quitterPIDs) {
		if !alive(pid) {
			t.Fatalf("backend process %d died with berth; backends must outlive a crashed berth so it can recover them", pid)
		}
	}
	// One dies while berth is down.
	for _, pid := range victimPIDs {
		syscall.Kill(pid, syscall.SIGKILL)
		waitGone(t, pid, 5*time.Second)
	}

	// New ports: the old ones may have been taken meanwhile. The records,
	// the runtime's handles and the token key are all in the data dir.
	s2 := start(t, opts{dataDir: dir})

	t.Run("running backend recovered", func(t *testing.T) {
		if b := s2.backend(t, survivor.BackendID); b.State != berth.StateReady {
			t.Fatalf("survivor is %q (reason %q) after the restart, want ready", b.State, b.Reason)
		}
		c := s2.connect(t, api.ConnectRequest{Key: "survivor", Spawn: tb(nil), Wait: true})
		if c.Spawned || c.BackendID != survivor.BackendID {
			t.Errorf("connect after restart: backend %s spawned %v, want the recovered %s", c.BackendID, c.Spawned, survivor.BackendID)
		}
		if resp, body := get(t, c.URL, nil); resp.StatusCode != http.StatusOK {
			t.Errorf("fresh URL of the recovered backend: %d %s", resp.StatusCode, body)
		}
		// The token key lives in the data dir, so tokens handed out before
		// the crash still work.
		if resp, body := get(t, s2.Proxy+"/"+survivor.Token+"/", nil); resp.StatusCode != http.StatusOK {
			t.Errorf("token issued before the crash: %d %s", resp.StatusCode, body)
		}
		if got := backendPIDs(survivor.BackendID); !slices.Equal(got, survivorPIDs) {
			t.Errorf("survivor's processes %v, want the same %v as before (re-adopted, not restarted)", got, survivorPIDs)
		}
	})

	t.Run("dead backend lost", func(t *testing.T) {
		b := s2.waitTerminated(t, victim.BackendID, 10*time.Second)
		if b.Reason != berth.ReasonLost {
			t.Errorf("victim: reason %q, want lost", b.Reason)
		}
		resp, _ := get(t, s2.Proxy+"/"+victim.Token+"/", nil)
		if resp.StatusCode != http.StatusGone {
			t.Errorf("victim's token: %d, want 410", resp.StatusCode)
		}
		// Its key is free, and the next holder is fenced above it.
		c := s2.spawnReady(t, "victim", tb(nil))
		if !c.Spawned || c.BackendID == victim.BackendID {
			t.Errorf("connect for the lost backend's key: backend %s spawned %v, want a new one", c.BackendID, c.Spawned)
		}
		if c.FencingToken <= victim.FencingToken {
			t.Errorf("new holder's fencing token %d, want > %d", c.FencingToken, victim.FencingToken)
		}
	})

	t.Run("recovered backend is supervised", func(t *testing.T) {
		// Exiting on its own is noticed for a re-adopted backend too (its
		// exit code may be unknown: berth is no longer its parent).
		req, _ := http.NewRequestWithContext(testCtx(t, 10*time.Second), http.MethodGet, s2.Proxy+"/"+quitter.Token+"/exit?code=0", nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
		b := s2.waitTerminated(t, quitter.BackendID, 10*time.Second)
		if b.Reason != berth.ReasonExited && b.Reason != berth.ReasonCrashed {
			t.Errorf("quitter: reason %q, want exited (or crashed, if the code is unknown)", b.Reason)
		}
		// And terminating one works: the cleanup's graceful stop would
		// leave it running otherwise.
		s2.terminate(t, survivor.BackendID, false)
		b = s2.waitTerminated(t, survivor.BackendID, 10*time.Second)
		if b.Reason != berth.ReasonRequested {
			t.Errorf("survivor: reason %q, want requested", b.Reason)
		}
		for _, pid := range survivorPIDs {
			waitGone(t, pid, 5*time.Second)
		}
	})

	t.Run("live backend at restart survives a second restart", func(t *testing.T) {
		c := s2.spawnReady(t, "second", tb(nil))
		pids := mustPIDs(t, c.BackendID)
		s2.kill()
		s3 := start(t, opts{dataDir: dir})
		if b := s3.backend(t, c.BackendID); b.State != berth.StateReady {
			t.Errorf("after a second SIGKILL and restart: %q, want ready", b.State)
		}
		if got := backendPIDs(c.BackendID); !slices.Equal(got, pids) {
			t.Errorf("processes %v, want the same %v", got, pids)
		}
		// s3's cleanup stops everything gracefully and checks nothing is left.
	})
}
