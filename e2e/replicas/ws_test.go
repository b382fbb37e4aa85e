package replicas

import (
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"
)

// testWebSocketAcross opens the notepad demo backend's WebSocket with a
// token from a, through b's proxy, to a backend far runs, and edits the
// document over it.
func testWebSocketAcross(t *testing.T, c *cluster, a, b, far *node) {
	t.Helper()
	ctx := testCtx(t, time.Minute)
	grace := 2
	notepad := &berth.SpawnConfig{Command: []string{bin.Berth, "demo-backend"}, GraceSeconds: &grace}
	if _, err := far.Client.Connect(ctx, api.ConnectRequest{Key: "pad", Spawn: notepad, Wait: true}); err != nil {
		t.Fatal(err)
	}
	res, err := a.Client.Connect(ctx, api.ConnectRequest{Key: "pad", Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	u := "ws" + strings.TrimPrefix(b.Proxy, "http") + "/" + res.Token + "/ws"
	conn, _, err := websocket.Dial(ctx, u, nil)
	if err != nil {
		t.Fatalf("WebSocket through %s's proxy: %v", b.id, err)
	}
	defer conn.CloseNow()
	type state struct {
		Text string `json:"text"`
		Ack  int64  `json:"ack"`
	}
	var s state
	if err := wsjson.Read(ctx, conn, &s); err != nil {
		t.Fatal(err)
	}
	if err := wsjson.Write(ctx, conn, map[string]any{"seq": 1, "text": "across nodes"}); err != nil {
		t.Fatal(err)
	}
	for s.Text != "across nodes" {
		if err := wsjson.Read(ctx, conn, &s); err != nil {
			t.Fatalf("after the edit: %v", err)
		}
	}
	conn.Close(websocket.StatusNormalClosure, "")
}
