package replicas

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
)

// A replica killed with SIGKILL under load takes its backends with it; its
// keys stay held until its lease expires, then the next connect starts a
// new backend elsewhere with a larger fencing token, which loads the last
// state saved; the old record reads lost. The other replicas serve
// throughout, and the killed one, started again, resurrects nothing.
func TestReplicas_NodeKilled(t *testing.T) {
	c := newCluster(t, 3)
	a, b, dead := c.nodes[0], c.nodes[1], c.nodes[2]
	ctx := testCtx(t, 2*time.Minute)
	grace := 2
	notepad := &berth.SpawnConfig{Command: []string{bin.Berth, "demo-backend"}, GraceSeconds: &grace,
		State: berth.StateConfig{Mode: berth.StateModeBlob, SaveIntervalSeconds: 1}}
	// A first session saves the document when it stops (the notepad saves
	// at shutdown); the second, on the same node, edits it without saving.
	session, err := dead.Client.Connect(ctx, api.ConnectRequest{Key: "doc", Spawn: notepad, Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	edit(t, dead, session, "saved before the kill")
	if err := dead.Client.Terminate(ctx, session.BackendID, false); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the edit to be saved", func() bool {
		var buf bytes.Buffer
		return a.Client.StateData(ctx, "doc", "", &buf) == nil && strings.Contains(buf.String(), "saved before the kill")
	})
	var first *api.ConnectResponse
	eventually(t, 10*time.Second, "a second session", func() bool {
		first, err = dead.Client.Connect(ctx, api.ConnectRequest{Key: "doc", Spawn: notepad, Wait: true})
		return err == nil && first.BackendID != session.BackendID
	})
	if got := read(t, dead, first); got != "saved before the kill" {
		t.Fatalf("the second session loaded %q", got)
	}
	edit(t, dead, first, "never saved")

	// More keys held by the node about to die, and load on the other
	// replicas all along: connects for those keys and for keys of their own.
	var deadHeld []*api.ConnectResponse
	for k := range 4 {
		res, err := dead.Client.Connect(ctx, api.ConnectRequest{Key: fmt.Sprintf("load-%d", k), Spawn: c.spawn(), Wait: true})
		if err != nil {
			t.Fatal(err)
		}
		deadHeld = append(deadHeld, res)
	}
	stopLoad := make(chan struct{})
	loadDone := make(chan error, 1)
	go func() {
		defer close(loadDone)
		for i := 0; ; i++ {
			select {
			case <-stopLoad:
				return
			default:
			}
			nd := []*node{a, b}[i%2]
			if _, err := nd.Client.Connect(ctx, api.ConnectRequest{Key: fmt.Sprintf("load-%d", i%8), Spawn: c.spawn()}); err != nil {
				loadDone <- fmt.Errorf("connect via %s during the failover: %w", nd.id, err)
				return
			}
		}
	}()
	defer func() {
		close(stopLoad)
		if err := <-loadDone; err != nil {
			t.Error(err)
		}
	}()
	if pids := backendProcs(first.BackendID); len(pids) == 0 {
		t.Fatalf("backend %s has no process", first.BackendID)
	}
	killed := time.Now()
	dead.kill()
	eventually(t, 5*time.Second, "the dead replica's backends to die with it", func() bool {
		for _, res := range deadHeld {
			if len(backendProcs(res.BackendID)) > 0 {
				return false
			}
		}
		return len(backendProcs(first.BackendID)) == 0
	})

	// Within the lease the key is still the dead node's.
	res, err := a.Client.Connect(ctx, api.ConnectRequest{Key: "doc", Spawn: notepad})
	if err != nil {
		t.Fatal(err)
	}
	if time.Since(killed) < leaseTTL/2 && res.BackendID != first.BackendID {
		t.Fatalf("%s after the kill, connect got backend %s; want the dead node's %s until its lease expires",
			time.Since(killed).Round(time.Millisecond), res.BackendID, first.BackendID)
	}

	moved := awaitMoved(ctx, t, a.Client, "doc", notepad, first)
	if got := read(t, a, moved); got != "saved before the kill" {
		t.Errorf("the new backend loaded %q, want the last saved text", got)
	}
	t.Logf("the key moved %s after the kill (lease %s)", time.Since(killed).Round(time.Millisecond), leaseTTL)
	// Not before the dead node's lease expired (this host's clock is the
	// database's: both are on it).
	nodes, err := a.Client.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := a.Client.Backend(ctx, moved.BackendID)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.ID == dead.id && rec.CreatedAt.Before(n.LeaseExpiresAt) {
			t.Errorf("the new backend was created at %s, before the dead node's lease expired at %s", rec.CreatedAt, n.LeaseExpiresAt)
		}
	}
	if !moved.Spawned || moved.State != berth.StateReady || moved.FencingToken <= first.FencingToken {
		t.Errorf("new backend: spawned %v, %s, fencing token %d (old %d); want spawned, ready, larger", moved.Spawned, moved.State, moved.FencingToken, first.FencingToken)
	}
	old, err := a.Client.Backend(ctx, first.BackendID)
	if err != nil || old.State != berth.StateTerminated || old.Reason != berth.ReasonLost {
		t.Fatalf("the dead node's backend: %v %s/%s; want terminated, lost", err, old.State, old.Reason)
	}

	// The dead node's other keys moved too, each to a new backend on a
	// live node with a larger fencing token; nothing of the old ones runs.
	for _, held := range deadHeld {
		var now *api.ConnectResponse
		eventually(t, 4*leaseTTL, "key "+held.Key+" to move to a live replica", func() bool {
			res, err := a.Client.Connect(ctx, api.ConnectRequest{Key: held.Key, Spawn: c.spawn(), Wait: true})
			if err != nil {
				t.Fatal(err)
			}
			now = res
			return res.BackendID != held.BackendID
		})
		if now.FencingToken <= held.FencingToken || now.State != berth.StateReady {
			t.Errorf("key %s: new backend %s, fencing token %d (old %d); want ready, larger", held.Key, now.State, now.FencingToken, held.FencingToken)
		}
		if rec, err := a.Client.Backend(ctx, now.BackendID); err != nil || rec.Node == dead.id {
			t.Errorf("key %s: new backend on %v (%v), want a live node", held.Key, rec, err)
		}
		if pids := backendProcs(held.BackendID); len(pids) > 0 {
			t.Errorf("key %s: the dead node's backend %s still runs: pids %v", held.Key, held.BackendID, pids)
		}
	}

	dead.restart()
	if old, err := dead.Client.Backend(ctx, first.BackendID); err != nil || old.State != berth.StateTerminated {
		t.Errorf("after the restart, the old backend is %v (%v); want still terminated", old.State, err)
	}
	if pids := backendProcs(first.BackendID); len(pids) > 0 {
		t.Errorf("after the restart, the old backend runs again: pids %v", pids)
	}
	if got, err := dead.Client.Connect(ctx, api.ConnectRequest{Key: "doc"}); err != nil || got.BackendID != moved.BackendID {
		t.Errorf("connect via the restarted node: %v, %v; want the new holder %s", got, err, moved.BackendID)
	}
	c.checkNoViolations()
	c.checkAudit()
}

// A replica killed with SIGKILL takes its backends' whole process groups
// along: the parent-death signal ends the process Berth forked, and the
// replica's reaper the rest of its group (here a child that ignores
// SIGTERM).
func TestReplicas_NodeKilledTakesProcessGroups(t *testing.T) {
	c := newCluster(t, 2)
	dead := c.nodes[1]
	ctx := testCtx(t, time.Minute)
	spawn := c.spawn()
	pidFile := filepath.Join(c.shared, "child.pid")
	spawn.Env["TB_CHILD"] = "1"
	spawn.Env["TB_CHILD_PIDFILE"] = pidFile
	res, err := dead.Client.Connect(ctx, api.ConnectRequest{Key: "doc", Spawn: spawn, Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	child, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	if syscall.Kill(child, 0) != nil || len(backendProcs(res.BackendID)) < 2 {
		t.Fatalf("backend %s: child %d and processes %v, want both alive", res.BackendID, child, backendProcs(res.BackendID))
	}
	dead.kill()
	eventually(t, leaseTTL, "every process of the dead replica's backend to end", func() bool {
		return len(backendProcs(res.BackendID)) == 0
	})
}

// awaitMoved connects to key through c until the key's backend is no
// longer first's (its node is gone or cut off, and the lease expired),
// and returns the new one.
func awaitMoved(ctx context.Context, t *testing.T, c *api.Client, key string, spawn *berth.SpawnConfig, first *api.ConnectResponse) *api.ConnectResponse {
	t.Helper()
	var moved *api.ConnectResponse
	eventually(t, 4*leaseTTL, "key "+key+" to move to a live replica", func() bool {
		res, err := c.Connect(ctx, api.ConnectRequest{Key: key, Spawn: spawn, Wait: true})
		if err != nil {
			t.Fatal(err)
		}
		moved = res
		return res.BackendID != first.BackendID
	})
	return moved
}

// awaitRejoined waits until the replica whose API is at apiURL, cut off and
// connected again, is healthy, then checks that the backend it ran (first)
// is recorded lost (seen through other) and that it routes the key to the
// new holder (moved).
func awaitRejoined(ctx context.Context, t *testing.T, within time.Duration, apiURL string, rejoined, other *api.Client, first, moved *api.ConnectResponse) {
	t.Helper()
	eventually(t, within, "the reconnected replica to be healthy again", func() bool {
		resp, err := http.Get(apiURL + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	if old, err := other.Backend(ctx, first.BackendID); err != nil || old.State != berth.StateTerminated || old.Reason != berth.ReasonLost {
		t.Errorf("the cut-off node's backend: %+v, %v; want terminated, lost", old, err)
	}
	if got, err := rejoined.Connect(ctx, api.ConnectRequest{Key: first.Key}); err != nil || got.BackendID != moved.BackendID {
		t.Errorf("connect via the rejoined node: %+v, %v; want the new holder %s", got, err, moved.BackendID)
	}
}
