package replicas

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
	"github.com/berthhq/berth/internal/testbin"
	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"
)

// berthCLI runs the berth CLI against nd.
func berthCLI(t *testing.T, nd *node, args ...string) string {
	t.Helper()
	cmd := exec.Command(bin.Berth, args...)
	cmd.Env = append(testbin.CleanEnv(), "BERTH_API="+nd.API, "BERTH_URL="+nd.API, "BERTH_API_KEY="+nd.c.apiKey)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("berth %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

// A drained node gets no new backends: a connect through it places the
// backend on another node, which picks it up, and the connect waits for it
// there; the backend's events stream and its terminate work through the
// drained node; undrained, it takes new backends again.
func TestReplicas_DrainPlacesElsewhere(t *testing.T) {
	c := newCluster(t, 2)
	a, b := c.nodes[0], c.nodes[1]
	ctx := testCtx(t, time.Minute)

	if out := berthCLI(t, b, "node", "drain", a.id); !strings.Contains(out, "Drained "+a.id) {
		t.Fatalf("berth node drain: %q", out)
	}
	out := berthCLI(t, b, "node", "ls")
	if !strings.Contains(out, a.id) || !strings.Contains(out, "drained") || !strings.Contains(out, b.id) {
		t.Fatalf("berth node ls after the drain:\n%s", out)
	}
	var list api.NodeList
	if err := json.Unmarshal([]byte(berthCLI(t, a, "node", "ls", "--output", "json")), &list); err != nil || len(list.Nodes) != 2 {
		t.Fatalf("berth node ls --output json: %v %+v", err, list)
	}

	// Placement reads the nodes with every lease renewal.
	time.Sleep(2 * leaseRenew)
	res, err := a.Client.Connect(ctx, api.ConnectRequest{Key: "doc", Spawn: c.spawn(), Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Spawned || res.State != berth.StateReady {
		t.Fatalf("connect through the drained node: spawned %v, %s; want spawned, ready", res.Spawned, res.State)
	}
	rec, err := a.Client.Backend(ctx, res.BackendID)
	if err != nil || rec.Node != b.id {
		t.Fatalf("backend placed on %q (%v), want %s", rec.Node, err, b.id)
	}
	if v := a.metric(t, `berth_placements_total{where="remote"}`); v != "1" {
		t.Errorf(`the drained node's berth_placements_total{where="remote"} = %q, want 1`, v)
	}
	resp, err := http.Get(a.Proxy + "/" + res.Token + "/echo")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET through the drained node's proxy: %v %v", resp, err)
	}
	resp.Body.Close()

	// Its events, followed through the drained node, reach terminated when
	// the drained node asks for the terminate.
	states := make(chan berth.State, 16)
	go func() {
		defer close(states)
		a.Client.Events(ctx, res.BackendID, func(e api.StateEvent) error {
			states <- e.State
			return nil
		})
	}()
	time.Sleep(200 * time.Millisecond)
	if err := a.Client.Terminate(ctx, res.BackendID, false); err != nil {
		t.Fatal(err)
	}
	var last berth.State
	for s := range states {
		last = s
	}
	if last != berth.StateTerminated {
		t.Errorf("events through the drained node ended at %q, want terminated", last)
	}
	eventually(t, 10*time.Second, "the backend's process to stop", func() bool { return len(backendProcs(res.BackendID)) == 0 })
	if rec, _ := a.Client.Backend(ctx, res.BackendID); rec == nil || rec.Reason != berth.ReasonRequested {
		t.Errorf("terminated backend: %+v, want reason requested", rec)
	}

	berthCLI(t, b, "node", "undrain", a.id)
	time.Sleep(2 * leaseRenew)
	res, err = a.Client.Connect(ctx, api.ConnectRequest{Key: "doc2", Spawn: c.spawn(), Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	if rec, err := a.Client.Backend(ctx, res.BackendID); err != nil || rec.Node != a.id {
		t.Errorf("after the undrain, the backend went to %q (%v), want %s", rec.Node, err, a.id)
	}
}

// Traffic that reaches a backend only through the proxy of a replica that
// does not run it keeps it from going idle, and once it stops, the backend
// stops about max_idle_seconds later.
func TestReplicas_IdleCountsEveryProxy(t *testing.T) {
	c := newCluster(t, 2)
	a, far := c.nodes[0], c.nodes[1]
	ctx := testCtx(t, time.Minute)
	spawn := c.spawn()
	idle := 3
	spawn.MaxIdleSeconds = &idle
	res, err := far.Client.Connect(ctx, api.ConnectRequest{Key: "doc", Spawn: spawn, Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	url := a.Proxy + "/" + res.Token + "/echo"
	var lastReq time.Time
	for end := time.Now().Add(3 * time.Duration(idle) * time.Second); time.Now().Before(end); time.Sleep(time.Second) {
		resp, err := http.Get(url)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET through the other replica: %v %v", resp, err)
		}
		resp.Body.Close()
		lastReq = time.Now()
	}
	var ended time.Time
	eventually(t, 10*time.Second, "the backend to stop once idle", func() bool {
		b, err := a.Client.Backend(ctx, res.BackendID)
		if err == nil && !b.State.Live() {
			ended = time.Now()
			return true
		}
		return false
	})
	if b, _ := a.Client.Backend(ctx, res.BackendID); b.Reason != berth.ReasonIdle {
		t.Errorf("backend ended with reason %q, want idle", b.Reason)
	}
	after := ended.Sub(lastReq)
	t.Logf("stopped %s after the last request (max_idle_seconds %d)", after.Round(10*time.Millisecond), idle)
	if want := time.Duration(idle) * time.Second; after < want || after > want+3*time.Second {
		t.Errorf("stopped %s after the last request through another replica, want within a couple of seconds of %s", after, want)
	}
}

// A WebSocket held open, silent, through the proxy of a replica that does
// not run the backend keeps it from going idle; once it closes, the
// backend stops about max_idle_seconds later.
func TestReplicas_IdleCountsOpenConnectionsEveryProxy(t *testing.T) {
	c := newCluster(t, 2)
	a, far := c.nodes[0], c.nodes[1]
	ctx := testCtx(t, time.Minute)
	idle, grace := 3, 2
	notepad := &berth.SpawnConfig{Command: []string{bin.Berth, "demo-backend"}, GraceSeconds: &grace, MaxIdleSeconds: &idle}
	res, err := far.Client.Connect(ctx, api.ConnectRequest{Key: "pad", Spawn: notepad, Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	if rec, err := a.Client.Backend(ctx, res.BackendID); err != nil || rec.Node != far.id {
		t.Fatalf("backend %s on %v (%v), want %s", res.BackendID, rec, err, far.id)
	}
	conn := dialPad(t, a, res)
	var s notepadState
	if err := wsjson.Read(ctx, conn, &s); err != nil {
		t.Fatal(err)
	}
	// Nothing crosses the connection for three idle periods.
	time.Sleep(3 * time.Duration(idle) * time.Second)
	if b, err := a.Client.Backend(ctx, res.BackendID); err != nil || b.State != berth.StateReady {
		t.Fatalf("with a WebSocket open through %s, the backend is %+v (%v); want ready", a.id, b, err)
	}
	conn.Close(websocket.StatusNormalClosure, "")
	closed := time.Now()
	var ended time.Time
	eventually(t, 15*time.Second, "the backend to stop once idle", func() bool {
		b, err := a.Client.Backend(ctx, res.BackendID)
		if err == nil && !b.State.Live() {
			ended = time.Now()
			return true
		}
		return false
	})
	if b, _ := a.Client.Backend(ctx, res.BackendID); b.Reason != berth.ReasonIdle {
		t.Errorf("backend ended with reason %q, want idle", b.Reason)
	}
	// ended is when the record said terminated: the graceful stop (up to
	// grace_seconds) comes after the idle deadline.
	after := ended.Sub(closed)
	t.Logf("stopped %s after the WebSocket closed (max_idle_seconds %d)", after.Round(10*time.Millisecond), idle)
	if want := time.Duration(idle) * time.Second; after < want || after > want+time.Duration(grace)*time.Second+3*time.Second {
		t.Errorf("stopped %s after the WebSocket through another replica closed, want within a couple of seconds of %s", after, want)
	}
}

// Restarting the replicas one at a time never leaves a key without a
// backend it can reach or restart, and never with two.
func TestReplicas_RollingRestart(t *testing.T) {
	c := newCluster(t, 3)
	ctx := testCtx(t, 2*time.Minute)
	keys := []string{"k1", "k2", "k3", "k4", "k5", "k6"}
	for i, k := range keys {
		if _, err := c.nodes[i%3].Client.Connect(ctx, api.ConnectRequest{Key: k, Spawn: c.spawn(), Wait: true}); err != nil {
			t.Fatal(err)
		}
	}
	for i, nd := range c.nodes {
		other := c.nodes[(i+1)%3]
		nd.stopGracefully()
		for _, k := range keys {
			res, err := other.Client.Connect(ctx, api.ConnectRequest{Key: k, Spawn: c.spawn(), Wait: true})
			if err != nil {
				t.Fatalf("key %s while %s is down: %v", k, nd.id, err)
			}
			resp, err := http.Get(other.Proxy + "/" + res.Token + "/echo")
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("key %s while %s is down: GET %v %v", k, nd.id, resp, err)
			}
			resp.Body.Close()
		}
		nd.restart()
	}
	c.checkNoViolations()
	c.checkAudit()
}

// GET /v1/events on one replica streams the records of backends another
// replica runs, as they change: the stream is fed by the store's feed.
func TestReplicas_EventsStreamAnyReplica(t *testing.T) {
	c := newCluster(t, 2)
	a, far := c.nodes[0], c.nodes[1]
	ctx := testCtx(t, time.Minute)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, a.API+"/v1/events", nil)
	req.Header.Set("Authorization", "Bearer "+c.apiKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v1/events on %s: %d", a.id, resp.StatusCode)
	}
	seen := make(chan berth.Backend, 64)
	go func() {
		defer close(seen)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			data, ok := strings.CutPrefix(sc.Text(), "data: ")
			if !ok {
				continue
			}
			var b berth.Backend
			if json.Unmarshal([]byte(data), &b) == nil {
				seen <- b
			}
		}
	}()
	res, err := far.Client.Connect(ctx, api.ConnectRequest{Key: "doc", Spawn: c.spawn(), Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	// Changes close together may merge (each backend at its latest
	// state): the stream must come to ready, then, once terminated
	// through the node that runs it, to terminated.
	var states []berth.State
	until := func(want berth.State) {
		t.Helper()
		for b := range seen {
			if b.ID != res.BackendID {
				continue
			}
			if b.Node != far.id {
				t.Errorf("the stream on %s says backend %s runs on %q, want %s", a.id, b.ID, b.Node, far.id)
			}
			if len(states) == 0 || states[len(states)-1] != b.State {
				states = append(states, b.State)
			}
			if b.State == want {
				return
			}
		}
		t.Fatalf("the stream on %s ended after states %v of backend %s (on %s), before %s", a.id, states, res.BackendID, far.id, want)
	}
	until(berth.StateReady)
	if err := far.Client.Terminate(ctx, res.BackendID, false); err != nil {
		t.Fatal(err)
	}
	until(berth.StateTerminated)
	t.Logf("the stream on %s saw backend %s (on %s) go %v", a.id, res.BackendID, far.id, states)
}
