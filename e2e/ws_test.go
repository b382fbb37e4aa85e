package e2e

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"
)

// demo runs berth's own demo backend (the notepad), which serves a
// WebSocket at /ws: edits are {"seq","text"}, and every socket receives the
// document as {"text","version","editors","ack"} whenever it changes.
func demo() *berth.SpawnConfig {
	return &berth.SpawnConfig{Command: []string{bin.berth, "demo-backend"}, GraceSeconds: ptr(2)}
}

type notepadEdit struct {
	Seq  int64  `json:"seq"`
	Text string `json:"text"`
}

type notepadState struct {
	Text    string `json:"text"`
	Version int64  `json:"version"`
	Editors int    `json:"editors"`
	Ack     int64  `json:"ack"`
}

// dialWS opens the notepad's WebSocket through the proxy URL of a backend.
func dialWS(t *testing.T, ctx context.Context, backendURL string) *websocket.Conn {
	t.Helper()
	u := "ws" + strings.TrimPrefix(backendURL, "http") + "ws"
	conn, resp, err := websocket.Dial(ctx, u, nil)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("WebSocket %s through the proxy: %v (HTTP %d)", u, err, status)
	}
	t.Cleanup(func() { conn.CloseNow() })
	return conn
}

// awaitText reads notepad states until one has the text.
func awaitText(t *testing.T, ctx context.Context, conn *websocket.Conn, text string) notepadState {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		var m notepadState
		if err := wsjson.Read(ctx, conn, &m); err != nil {
			t.Fatalf("waiting for the text %q on the WebSocket: %v", text, err)
		}
		if m.Text == text {
			return m
		}
	}
}

var wsSeq atomic.Int64

// wsRoundTrip sends an edit and waits for the server to echo it back: both
// directions of the socket work through the proxy.
func wsRoundTrip(t *testing.T, ctx context.Context, conn *websocket.Conn, text string) {
	t.Helper()
	if err := wsjson.Write(ctx, conn, notepadEdit{Seq: wsSeq.Add(1), Text: text}); err != nil {
		t.Fatalf("WebSocket write: %v", err)
	}
	awaitText(t, ctx, conn, text)
}
