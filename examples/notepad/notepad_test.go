package notepad

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"
)

func newTestServer(t *testing.T, id identity) (*server, *httptest.Server) {
	t.Helper()
	s := newServer(testLogger(t), id)
	ts := httptest.NewServer(s.routes())
	t.Cleanup(func() {
		ts.Close()
		s.stop() // as serve does, so hijacked sockets end too
	})
	return s, ts
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func dial(t *testing.T, url string) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(url, "http")+"/ws", nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c
}

// until reads states from c until one satisfies ok, and returns it.
func until(t *testing.T, c *websocket.Conn, what string, ok func(stateMsg) bool) stateMsg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for {
		var m stateMsg
		if err := wsjson.Read(ctx, c, &m); err != nil {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		if ok(m) {
			return m
		}
	}
}

func send(t *testing.T, c *websocket.Conn, seq int64, text string) {
	t.Helper()
	if err := wsjson.Write(context.Background(), c, editMsg{Seq: seq, Text: text}); err != nil {
		t.Fatalf("send edit: %v", err)
	}
}

func TestServer_socket(t *testing.T) {
	_, ts := newTestServer(t, identity{})
	a := dial(t, ts.URL)
	until(t, a, "a's first state", func(m stateMsg) bool { return m.Editors == 1 })
	b := dial(t, ts.URL)
	until(t, b, "b's first state", func(m stateMsg) bool { return m.Editors == 2 })
	until(t, a, "a to see two editors", func(m stateMsg) bool { return m.Editors == 2 })

	send(t, a, 1, "hello")
	got := until(t, b, "a's edit at b", func(m stateMsg) bool { return m.Text == "hello" })
	if got.Version != 1 || got.Ack != 0 {
		t.Errorf("b got version %d ack %d, want 1 and 0 (b sent nothing)", got.Version, got.Ack)
	}
	got = until(t, a, "a's ack", func(m stateMsg) bool { return m.Ack == 1 })
	if got.Text != "hello" {
		t.Errorf("a's ack came with %q, want %q", got.Text, "hello")
	}

	// Resending the same text acks without a new version.
	send(t, a, 2, "hello")
	if got := until(t, a, "a's second ack", func(m stateMsg) bool { return m.Ack == 2 }); got.Version != 1 {
		t.Errorf("version after an unchanged edit = %d, want 1", got.Version)
	}

	send(t, b, 1, "hello world")
	until(t, a, "b's edit at a", func(m stateMsg) bool { return m.Text == "hello world" && m.Version == 2 })

	b.Close(websocket.StatusNormalClosure, "")
	until(t, a, "b to leave", func(m stateMsg) bool { return m.Editors == 1 })
}

func TestServer_socket_rejectsBadInput(t *testing.T) {
	_, ts := newTestServer(t, identity{})
	tests := []struct {
		name string
		msg  string
		code websocket.StatusCode
	}{
		{"not JSON", "hello", websocket.StatusInvalidFramePayloadData},
		{"too large", `{"seq":1,"text":"` + strings.Repeat("x", maxText+1) + `"}`, websocket.StatusMessageTooBig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dial(t, ts.URL)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := c.Write(ctx, websocket.MessageText, []byte(tt.msg)); err != nil {
				t.Fatal(err)
			}
			for {
				_, _, err := c.Read(ctx)
				if err != nil {
					if got := websocket.CloseStatus(err); got != tt.code {
						t.Fatalf("closed with %v (%v), want %v", got, err, tt.code)
					}
					return
				}
			}
		})
	}
}

func TestServer_apiDoc(t *testing.T) {
	_, ts := newTestServer(t, identity{})
	a := dial(t, ts.URL)
	send(t, a, 1, "some text")
	until(t, a, "ack", func(m stateMsg) bool { return m.Ack == 1 })

	resp, err := http.Get(ts.URL + "/api/doc")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got docJSON
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	want := docJSON{Text: "some text", Version: 1, Editors: 1}
	if got != want {
		t.Errorf("GET /api/doc = %+v, want %+v", got, want)
	}
}

func TestServer_pages(t *testing.T) {
	_, ts := newTestServer(t, identity{BackendID: "bk_123", Key: "doc/<42>"})
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(ts.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	if code, _ := get("/healthz"); code != http.StatusOK {
		t.Errorf("GET /healthz = %d, want 200", code)
	}
	if code, _ := get("/nope"); code != http.StatusNotFound {
		t.Errorf("GET /nope = %d, want 404", code)
	}
	code, body := get("/")
	if code != http.StatusOK {
		t.Fatalf("GET / = %d", code)
	}
	for _, want := range []string{"bk_123", "doc/&lt;42&gt;", `new URL("ws", base)`} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	// Under Berth the page lives at /<token>/: any root-relative or
	// absolute URL would escape it, and the machine may be offline.
	for _, bad := range []string{`"/ws"`, `src="http`, `href="http`, `src="/`, `href="/`} {
		if strings.Contains(body, bad) {
			t.Errorf("page contains %s; URLs must be relative to the page", bad)
		}
	}
}

func TestServer_socket_origin(t *testing.T) {
	_, ts := newTestServer(t, identity{secret: "s3cret"})
	url := "ws" + strings.TrimPrefix(ts.URL, "http") + "/ws"
	tests := []struct {
		name   string
		secret string
		ok     bool
	}{
		{"cross-origin, direct", "", false},
		{"cross-origin, wrong secret", "nope", false},
		{"cross-origin, through Berth's proxy", "s3cret", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{"Origin": {"http://berth.example:7080"}}
			if tt.secret != "" {
				h.Set("X-Berth-Secret", tt.secret)
			}
			c, _, err := websocket.Dial(context.Background(), url, &websocket.DialOptions{HTTPHeader: h})
			if c != nil {
				c.CloseNow()
			}
			if (err == nil) != tt.ok {
				t.Errorf("dial error = %v, want ok %v", err, tt.ok)
			}
		})
	}
}

func TestRun_shutdown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		saved []string
	)
	cfg := Config{
		Logger: testLogger(t),
		Load:   func(context.Context) ([]byte, error) { return []byte("loaded"), nil },
		Save: func(_ context.Context, text []byte) error {
			mu.Lock()
			defer mu.Unlock()
			saved = append(saved, string(text))
			return nil
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- serve(ctx, ln, cfg, identity{}) }()

	url := "http://" + ln.Addr().String()
	c := dial(t, url)
	until(t, c, "the loaded text", func(m stateMsg) bool { return m.Text == "loaded" })
	send(t, c, 1, "last words")
	until(t, c, "ack", func(m stateMsg) bool { return m.Ack == 1 })

	start := time.Now()
	cancel()
	// The open tab is told the server is going away (and would reconnect).
	rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer rcancel()
	for {
		_, _, err := c.Read(rctx)
		if err != nil {
			if got := websocket.CloseStatus(err); got != websocket.StatusGoingAway {
				t.Errorf("socket closed with %v (%v), want StatusGoingAway", got, err)
			}
			break
		}
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run returned %v, want nil", err)
		}
	case <-time.After(closeTimeout + saveTimeout):
		t.Fatal("Run did not return after cancel")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("shutdown took %v; the close handshake should be immediate", d)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(saved) != 1 || saved[0] != "last words" {
		t.Errorf("saved %q, want exactly [\"last words\"]", saved)
	}
}

func TestRun_errors(t *testing.T) {
	t.Run("load fails", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		boom := errors.New("boom")
		cfg := Config{Load: func(context.Context) ([]byte, error) { return nil, boom }}
		if err := serve(context.Background(), ln, cfg, identity{}); !errors.Is(err, boom) {
			t.Errorf("serve = %v, want it to wrap %v", err, boom)
		}
	})
	t.Run("save fails", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		boom := errors.New("boom")
		cfg := Config{Save: func(context.Context, []byte) error { return boom }}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := serve(ctx, ln, cfg, identity{}); !errors.Is(err, boom) {
			t.Errorf("serve = %v, want it to wrap %v", err, boom)
		}
	})
	t.Run("address in use", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		if err := Run(context.Background(), Config{Addr: ln.Addr().String()}); err == nil {
			t.Error("Run on a busy address returned nil")
		}
	})
}

// A tab that never answers the close handshake (a sleeping laptop) must not
// hold shutdown past closeTimeout, or Berth would kill us before the save.
func TestRun_shutdownUnresponsiveTab(t *testing.T) {
	if testing.Short() {
		t.Skip("waits closeTimeout")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	saved := make(chan string, 1)
	cfg := Config{Save: func(_ context.Context, text []byte) error { saved <- string(text); return nil }}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, ln, cfg, identity{}) }()

	c := dial(t, "http://"+ln.Addr().String())
	send(t, c, 1, "kept")
	until(t, c, "ack", func(m stateMsg) bool { return m.Ack == 1 })
	// From here on nobody reads c, so the server's close frame goes unanswered.

	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run returned %v", err)
		}
	case <-time.After(closeTimeout + saveTimeout):
		t.Fatal("Run did not return")
	}
	if d := time.Since(start); d > closeTimeout+time.Second {
		t.Errorf("shutdown took %v, want about closeTimeout (%v)", d, closeTimeout)
	}
	if got := <-saved; got != "kept" {
		t.Errorf("saved %q, want %q", got, "kept")
	}
}
