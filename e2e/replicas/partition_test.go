package replicas

import (
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"
)

// A replica cut off from PostgreSQL stops its backends before its lease can
// expire, saving their state; a connect through another replica then gets a
// new backend that loaded that save; and the cut-off replica, reconnected,
// rejoins without its old backend.
func TestReplicas_CutOff(t *testing.T) {
	r := newRelay(t, pgAddr(t, os.Getenv("BERTH_TEST_POSTGRES_URL")))
	c := newCluster(t, 3, r)
	a, cut := c.nodes[0], c.nodes[2]
	ctx := testCtx(t, 2*time.Minute)

	grace := 5
	notepad := &berth.SpawnConfig{Command: []string{bin.Berth, "demo-backend"}, GraceSeconds: &grace,
		State: berth.StateConfig{Mode: berth.StateModeBlob}}
	first, err := cut.Client.Connect(ctx, api.ConnectRequest{Key: "pad", Spawn: notepad, Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	if first.State != berth.StateReady {
		t.Fatalf("backend %s is %s (%s), want ready", first.BackendID, first.State, first.Reason)
	}
	edit(t, cut, first, "written before the partition")

	if v := cut.metric(t, "berth_lease_held"); v != "1" {
		t.Errorf("berth_lease_held = %q before the partition, want 1", v)
	}
	if v := cut.metric(t, `berth_backends{state="ready"}`); v != "1" {
		t.Errorf(`berth_backends{state="ready"} = %q, want 1`, v)
	}
	// The renewals are counted (the registration is not one: wait for
	// the first renewal after it).
	eventually(t, leaseTTL, `berth_lease_renew_seconds_count{result="ok"} to count a renewal`, func() bool {
		v := cut.metric(t, `berth_lease_renew_seconds_count{result="ok"}`)
		return v != "" && v != "0"
	})
	cutAt := time.Now()
	r.partition()
	eventually(t, leaseTTL, "the cut-off replica's backend to stop", func() bool { return len(backendProcs(first.BackendID)) == 0 })
	stoppedAt := time.Now()
	t.Logf("the backend stopped %s after the partition (lease %s)", stoppedAt.Sub(cutAt).Round(time.Millisecond), leaseTTL)
	eventually(t, 5*time.Second, "the cut-off replica to say it is not healthy", func() bool {
		resp, err := http.Get(cut.API + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable
	})

	if v := cut.metric(t, "berth_lease_held"); v != "0" {
		t.Errorf("berth_lease_held = %q once cut off, want 0", v)
	}
	if v := cut.metric(t, `berth_lease_renew_seconds_count{result="error"}`); v == "" || v == "0" {
		t.Errorf(`berth_lease_renew_seconds_count{result="error"} = %q once cut off, want the failed renewals counted`, v)
	}
	moved := awaitMoved(ctx, t, a.Client, "pad", notepad, first)
	nodes, err := a.Client.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.ID == cut.id && !stoppedAt.Before(n.LeaseExpiresAt) {
			t.Errorf("the backend stopped at %s, not before the cut-off node's lease expired at %s", stoppedAt, n.LeaseExpiresAt)
		}
	}
	if got := read(t, a, moved); got != "written before the partition" {
		t.Errorf("the new backend loaded %q, want the text saved before the partition", got)
	}
	if moved.FencingToken <= first.FencingToken {
		t.Errorf("new fencing token %d, want more than %d", moved.FencingToken, first.FencingToken)
	}

	r.heal()
	awaitRejoined(ctx, t, 15*time.Second, cut.API, cut.Client, a.Client, first, moved)
}

type notepadState struct {
	Text string `json:"text"`
	Ack  int64  `json:"ack"`
}

// edit writes text into the notepad behind res and waits for the ack.
func edit(t *testing.T, via *node, res *api.ConnectResponse, text string) {
	t.Helper()
	ctx := testCtx(t, 30*time.Second)
	conn := dialPad(t, via, res)
	defer conn.CloseNow()
	var s notepadState
	if err := wsjson.Read(ctx, conn, &s); err != nil {
		t.Fatal(err)
	}
	if err := wsjson.Write(ctx, conn, map[string]any{"seq": 1, "text": text}); err != nil {
		t.Fatal(err)
	}
	for s.Ack < 1 || s.Text != text {
		if err := wsjson.Read(ctx, conn, &s); err != nil {
			t.Fatal(err)
		}
	}
	conn.Close(websocket.StatusNormalClosure, "")
}

// read returns the notepad's text.
func read(t *testing.T, via *node, res *api.ConnectResponse) string {
	t.Helper()
	ctx := testCtx(t, 30*time.Second)
	conn := dialPad(t, via, res)
	defer conn.CloseNow()
	var s notepadState
	if err := wsjson.Read(ctx, conn, &s); err != nil {
		t.Fatal(err)
	}
	return s.Text
}

func dialPad(t *testing.T, via *node, res *api.ConnectResponse) *websocket.Conn {
	t.Helper()
	ctx := testCtx(t, 30*time.Second)
	u := "ws" + strings.TrimPrefix(via.Proxy, "http") + "/" + res.Token + "/ws"
	conn, _, err := websocket.Dial(ctx, u, nil)
	if err != nil {
		t.Fatalf("WebSocket via %s: %v", via.id, err)
	}
	return conn
}
