package freeze

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/internal/testbin"
	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"
)

// An open WebSocket is activity: a backend with one is never idle, so it
// is never frozen under its clients. The realistic case is the client
// that leaves (a closed laptop, a dropped network): its socket closes, the
// backend goes idle and freezes, and when the client comes back it
// reconnects, which thaws the backend with the document it held in memory.
func TestFreeze_WebSocketClientsReconnect(t *testing.T) {
	forEach(t, func(t *testing.T, v variant) {
		s := start(t, v)
		sc := &berth.SpawnConfig{
			Command:        []string{bin.Berth, "demo-backend"},
			GraceSeconds:   ptr(5),
			MaxIdleSeconds: ptr(1),
			IdleAction:     berth.IdleFreeze,
		}
		if v.runtime == "docker" {
			img, err := testbin.Image(bin.Berth, "berth-freeze-demo")
			if err != nil {
				t.Fatal(err)
			}
			sc.Image, sc.Command = img, []string{"/berth", "demo-backend"}
		}
		resp := s.connect(t, "doc-ws", sc)
		ctx := ctxFor(t, time.Minute)

		conn := dial(t, ctx, resp.URL)
		edit(t, ctx, conn, 1, "kept in memory")
		// Three idle periods with the socket open and silent: not frozen.
		time.Sleep(3 * time.Second)
		if b := s.backend(t, resp.BackendID); b.FrozenAt != nil {
			t.Fatalf("a backend with an open WebSocket was frozen at %v", b.FrozenAt)
		}
		edit(t, ctx, conn, 2, "kept in memory, still")
		conn.Close(websocket.StatusGoingAway, "client leaves")

		s.waitFrozen(t, resp.BackendID, 15*time.Second)
		again := dial(t, ctx, resp.URL) // thaws it
		awaitText(t, ctx, again, "kept in memory, still")
		if b := s.backend(t, resp.BackendID); b.FrozenAt != nil {
			t.Errorf("the backend is still frozen with a client connected")
		}
		edit(t, ctx, again, 3, "after the thaw")
	})
}

// dial opens the notepad's WebSocket through the proxy.
func dial(t *testing.T, ctx context.Context, backendURL string) *websocket.Conn {
	t.Helper()
	u := "ws" + strings.TrimPrefix(backendURL, "http") + "ws"
	conn, _, err := websocket.Dial(ctx, u, nil)
	if err != nil {
		t.Fatalf("WebSocket %s: %v", u, err)
	}
	t.Cleanup(func() { conn.CloseNow() })
	return conn
}

// edit sends the notepad a new text and waits for it to come back.
func edit(t *testing.T, ctx context.Context, conn *websocket.Conn, seq int64, text string) {
	t.Helper()
	if err := wsjson.Write(ctx, conn, map[string]any{"seq": seq, "text": text}); err != nil {
		t.Fatalf("WebSocket write: %v", err)
	}
	awaitText(t, ctx, conn, text)
}

// awaitText reads the notepad's document until it has text.
func awaitText(t *testing.T, ctx context.Context, conn *websocket.Conn, text string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	for {
		var m struct {
			Text string `json:"text"`
		}
		if err := wsjson.Read(ctx, conn, &m); err != nil {
			t.Fatalf("waiting for %q on the WebSocket: %v", text, err)
		}
		if m.Text == text {
			return
		}
	}
}
