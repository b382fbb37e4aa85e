package e2e

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptrace"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
	"github.com/coder/websocket"
)

// TestProxy: spawn, ready, and requests through the proxy reach the
// backend with the token stripped and Berth's headers set.
func TestProxy(t *testing.T) {
	t.Parallel()
	s := start(t, opts{})

	resp, body := s.do(t, http.MethodPost, "/v1/connect", connectJSON(t, api.ConnectRequest{
		Key: "proxy", Spawn: tb(nil), User: "alice", Wait: true,
	}))
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("connect: %d %s, want 201", resp.StatusCode, body)
	}
	c := decode[api.ConnectResponse](t, body)
	if c.State != berth.StateReady || !c.Spawned || !strings.HasPrefix(c.BackendID, "bk_") || c.Key != "proxy" {
		t.Fatalf("connect: %+v; want a spawned, ready bk_… for key proxy", c)
	}
	if want := s.Proxy + "/" + c.Token + "/"; c.URL != want {
		t.Errorf("url %q, want %q", c.URL, want)
	}
	if want := s.API + "/v1/backends/" + c.BackendID + "/events"; c.StatusURL != want {
		t.Errorf("status_url %q, want %q", c.StatusURL, want)
	}

	t.Run("backend record", func(t *testing.T) {
		b := s.backend(t, c.BackendID)
		if b.State != berth.StateReady || b.Key != "proxy" || b.ReadyAt == nil || b.CreatedAt.IsZero() {
			t.Errorf("GET backend: %+v", b)
		}
		if len(b.Spawn.Command) == 0 || b.Spawn.Command[0] != bin.testbackend {
			t.Errorf("GET backend: spawn.command %v", b.Spawn.Command)
		}
		_, raw := s.do(t, http.MethodGet, "/v1/backends/"+c.BackendID, "")
		if env := tbEnv(t, c.URL); strings.Contains(string(raw), env["BERTH_SECRET"]) {
			t.Error("GET backend shows the backend's secret")
		}
	})

	t.Run("environment", func(t *testing.T) {
		env := tbEnv(t, c.URL)
		for k, want := range map[string]string{
			"BERTH_BACKEND_ID":    c.BackendID,
			"BERTH_KEY":           "proxy",
			"BERTH_FENCING_TOKEN": itoa(c.FencingToken),
		} {
			if env[k] != want {
				t.Errorf("backend env %s=%q, want %q", k, env[k], want)
			}
		}
		if env["PORT"] == "" || len(env["BERTH_SECRET"]) < 16 {
			t.Errorf("backend env PORT=%q BERTH_SECRET=%q; want a port and a long secret", env["PORT"], env["BERTH_SECRET"])
		}
	})

	t.Run("path, query, headers", func(t *testing.T) {
		secret := tbEnv(t, c.URL)["BERTH_SECRET"]
		forged := http.Header{
			"X-Berth-Backend": {"bk_forged"},
			"X-Berth-User":    {"mallory"},
			"X-Berth-Secret":  {"forged"},
			"X-Berth-Other":   {"forged"},
			"X-Custom":        {"kept"},
		}
		e := echo(t, c.URL, "?a=1&b=two%2Fthree", forged)
		if e.URL != "/echo?a=1&b=two%2Fthree" {
			t.Errorf("backend got URL %q, want /echo?a=1&b=two%%2Fthree (token stripped, query intact)", e.URL)
		}
		h := e.Headers
		for k, want := range map[string]string{
			"X-Berth-Backend": c.BackendID,
			"X-Berth-User":    "alice",
			"X-Berth-Secret":  secret,
			"X-Custom":        "kept",
		} {
			if got := h.Values(k); len(got) != 1 || got[0] != want {
				t.Errorf("backend got %s %q, want exactly %q", k, got, want)
			}
		}
		if got := h.Values("X-Berth-Other"); len(got) > 0 {
			t.Errorf("client-sent X-Berth-Other %q reached the backend; X-Berth-* from clients must be stripped", got)
		}
	})

	t.Run("methods and bodies", func(t *testing.T) {
		req, _ := http.NewRequestWithContext(testCtx(t, 10*time.Second), http.MethodPut, c.URL+"echo", strings.NewReader("hello body"))
		resp, body := send(t, req)
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"method":"PUT"`) || !strings.Contains(string(body), `"body":"hello body"`) {
			t.Errorf("PUT through the proxy: %d %s", resp.StatusCode, body)
		}
	})

	t.Run("keep-alive", func(t *testing.T) {
		tr := &http.Transport{}
		defer tr.CloseIdleConnections()
		hc := &http.Client{Transport: tr}
		reused := 0
		for i := range 10 {
			trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
				if info.Reused {
					reused++
				}
			}}
			req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(testCtx(t, 10*time.Second), trace), http.MethodGet, c.URL+"echo", nil)
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatalf("request %d: %v", i, err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		if reused < 9 {
			t.Errorf("%d of 10 requests reused the connection, want 9 (keep-alive through the proxy)", reused)
		}
	})

	t.Run("slow response", func(t *testing.T) {
		start := time.Now()
		resp, body := get(t, c.URL+"sleep?ms=300", nil)
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "slept") || time.Since(start) < 300*time.Millisecond {
			t.Errorf("slow response: %d %q after %v", resp.StatusCode, body, time.Since(start))
		}
	})

	t.Run("request while starting waits for ready", func(t *testing.T) {
		slow := s.connect(t, api.ConnectRequest{Spawn: tb(map[string]string{"TB_READY_DELAY_MS": "700"})})
		if slow.State == berth.StateReady {
			t.Fatalf("connect without wait returned a ready backend; the test needs it still starting")
		}
		resp, body := get(t, slow.URL+"echo", nil)
		if resp.StatusCode != http.StatusOK {
			t.Errorf("request during start: %d %s, want 200 once ready", resp.StatusCode, body)
		}
		s.terminate(t, slow.BackendID, true)
	})

	t.Run("websocket", func(t *testing.T) {
		d := s.spawnReady(t, "proxy-ws", demo())
		ctx := testCtx(t, 20*time.Second)
		a := dialWS(t, ctx, d.URL)
		b := dialWS(t, ctx, s.connect(t, api.ConnectRequest{Key: "proxy-ws"}).URL)
		wsRoundTrip(t, ctx, a, "typed in tab a")
		awaitText(t, ctx, b, "typed in tab a")
		wsRoundTrip(t, ctx, b, "and answered in tab b")
		awaitText(t, ctx, a, "and answered in tab b")
		a.Close(websocket.StatusNormalClosure, "")
		b.Close(websocket.StatusNormalClosure, "")
	})

	t.Run("websocket with a bad token", func(t *testing.T) {
		ctx := testCtx(t, 10*time.Second)
		_, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(s.Proxy, "http")+"/bogus-token/ws", nil)
		if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("WebSocket with a bad token: err %v, response %v; want a 401", err, resp)
		}
	})

	t.Run("demo page", func(t *testing.T) {
		d := s.connect(t, api.ConnectRequest{Key: "proxy-ws"})
		resp, body := get(t, d.URL, nil)
		if resp.StatusCode != http.StatusOK || !strings.Contains(strings.ToLower(string(body)), "<textarea") {
			t.Errorf("demo page through the proxy: %d, textarea %v", resp.StatusCode, strings.Contains(string(body), "<textarea"))
		}
	})
}

// TestMetrics: /metrics is Prometheus text with Berth's own series.
func TestMetrics(t *testing.T) {
	t.Parallel()
	s := start(t, opts{})
	c := s.spawnReady(t, "metrics", tb(nil))
	s.terminate(t, c.BackendID, true)
	s.waitTerminated(t, c.BackendID, 10*time.Second)
	resp, body := s.do(t, http.MethodGet, "/metrics", "")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %d", resp.StatusCode)
	}
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	found := map[string]bool{}
	for sc.Scan() {
		for _, name := range []string{"berth_spawns_total", "berth_connects_total", "berth_terminations_total"} {
			if strings.HasPrefix(sc.Text(), name) {
				found[name] = true
			}
		}
	}
	if len(found) != 3 {
		t.Errorf("/metrics has %v of berth_spawns_total, berth_connects_total, berth_terminations_total", found)
	}
	resp, body = s.do(t, http.MethodGet, "/healthz", "")
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/healthz: %d %s", resp.StatusCode, body)
	}
}

// The first request to a starting backend goes out on the connection its
// readiness probe opened, so the backend accepts no second connection.
func TestProxy_FirstRequestOnProbeConnection(t *testing.T) {
	t.Parallel()
	s := start(t, opts{})
	c := s.connect(t, api.ConnectRequest{Key: "first-request", Spawn: tb(map[string]string{"TB_READY_DELAY_MS": "300"})})
	if c.State == berth.StateReady {
		t.Fatalf("connect without wait answered %s; the test needs a backend still starting", c.State)
	}
	resp, body := get(t, c.URL+"conn", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET conn: %d %s", resp.StatusCode, body)
	}
	var carried []string
	if err := json.Unmarshal(body, &carried); err != nil {
		t.Fatalf("testbackend /conn answered %q: %v", body, err)
	}
	if len(carried) != 2 || carried[0] != "GET / berth-readiness" || !strings.HasPrefix(carried[1], "GET /conn ") {
		t.Errorf("the first request's connection carried %q; want the readiness probe, then the request", carried)
	}
}
