package server

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
	"github.com/berthhq/berth/runtime/runtimetest"
)

// Under an API key the dashboard signs in once: the key, posted, buys an
// HttpOnly, SameSite=Strict cookie that the API takes instead of the
// Bearer header, for reads freely and for changes only with X-Berth-UI.
func TestRequireKey_SessionCookie(t *testing.T) {
	const key = "the-api-key-0123456789"
	srv := httptest.NewServer(NewAPI(APIConfig{Manager: newProcessManager(t, nil), APIKey: key}))
	t.Cleanup(srv.Close)
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	do := func(method, path, body string, hdr map[string]string, cookie *http.Cookie) (*http.Response, string) {
		t.Helper()
		req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		if cookie != nil {
			req.AddCookie(cookie)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	expect := func(what string, resp *http.Response, body string, status int, code string) {
		t.Helper()
		if resp.StatusCode != status {
			t.Errorf("%s: %d %s, want %d", what, resp.StatusCode, body, status)
			return
		}
		if code == "" {
			return
		}
		var eb api.ErrorBody
		if err := json.Unmarshal([]byte(body), &eb); err != nil || eb.Error.Code != code {
			t.Errorf("%s: body %s, want error code %q", what, body, code)
		}
	}
	ui := map[string]string{UIHeader: "1"}

	resp, body := do("GET", "/v1/backends", "", nil, nil)
	expect("list without a key", resp, body, 401, api.CodeUnauthorized)
	// The dashboard's files need no key, but no path through them
	// reaches the API without one.
	for _, p := range []string{"/ui/../v1/backends", "/ui/%2e%2e/v1/backends", "/ui/..%2fv1/backends"} {
		req, _ := http.NewRequest("GET", srv.URL+"/", nil)
		req.URL.Opaque = p // sent as is, not cleaned by the client
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK && strings.Contains(string(b), `"backends"`) {
			t.Errorf("GET %s without a key listed the backends", p)
		}
	}
	resp, body = do("GET", "/ui/", "", nil, nil)
	expect("the dashboard's page", resp, body, 200, "")
	if !strings.Contains(body, `id="login-form"`) || !strings.Contains(resp.Header.Get("Content-Security-Policy"), "frame-ancestors 'none'") {
		t.Errorf("GET /ui/: want the page with its sign-in form and a CSP that forbids framing; got CSP %q", resp.Header.Get("Content-Security-Policy"))
	}
	resp, body = do("GET", "/", "", nil, nil)
	if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != "/ui/" {
		t.Errorf("GET /: %d to %q, want 302 to /ui/", resp.StatusCode, resp.Header.Get("Location"))
	}
	resp, body = do("GET", "/ui/session", "", nil, nil)
	if strings.TrimSpace(body) != `{"key_required":true,"signed_in":false}` {
		t.Errorf("session before sign-in: %s", body)
	}
	resp, body = do("POST", "/ui/login", `{"key":"wrong"}`, nil, nil)
	expect("sign in with a wrong key", resp, body, 401, api.CodeUnauthorized)
	if len(resp.Cookies()) != 0 {
		t.Errorf("a wrong key got a cookie: %v", resp.Cookies())
	}
	resp, body = do("POST", "/ui/login", `{"kee":"x"}`, nil, nil)
	expect("sign in with a misspelled field", resp, body, 400, api.CodeBadRequest)

	resp, body = do("POST", "/ui/login", `{"key":"`+key+`"}`, nil, nil)
	expect("sign in", resp, body, 204, "")
	var c *http.Cookie
	for _, rc := range resp.Cookies() {
		if rc.Name == sessionCookie {
			c = rc
		}
	}
	if c == nil {
		t.Fatalf("sign-in set no %s cookie: %v", sessionCookie, resp.Header["Set-Cookie"])
	}
	if !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Path != "/" || strings.Contains(c.Value, key) {
		t.Errorf("cookie %+v: want HttpOnly, SameSite=Strict, Path=/ and no API key in it", c)
	}
	session := &http.Cookie{Name: c.Name, Value: c.Value}

	resp, body = do("GET", "/ui/session", "", nil, session)
	if strings.TrimSpace(body) != `{"key_required":true,"signed_in":true}` {
		t.Errorf("session after sign-in: %s", body)
	}
	resp, body = do("GET", "/v1/backends", "", nil, session)
	expect("list with the cookie", resp, body, 200, "")
	resp, body = do("POST", "/v1/backends/bk_none/terminate", "", nil, session)
	expect("terminate with the cookie but no "+UIHeader, resp, body, 403, api.CodeForbidden)
	resp, body = do("POST", "/v1/backends/bk_none/terminate", "", ui, session)
	expect("terminate with the cookie and "+UIHeader, resp, body, 404, api.CodeNotFound)
	resp, body = do("GET", "/v1/backends", "", map[string]string{"Authorization": "Bearer wrong"}, session)
	expect("a wrong Bearer key next to a good cookie", resp, body, 401, api.CodeUnauthorized)

	exp, _, _ := strings.Cut(c.Value, ".")
	forged := &http.Cookie{Name: c.Name, Value: exp + "9." + strings.SplitN(c.Value, ".", 2)[1]}
	resp, body = do("GET", "/v1/backends", "", nil, forged)
	expect("a cookie whose expiry was changed", resp, body, 401, api.CodeUnauthorized)
	old := sessions{key: key}.issue(time.Now().Add(-sessionTTL - time.Minute))
	resp, body = do("GET", "/v1/backends", "", nil, &http.Cookie{Name: sessionCookie, Value: old})
	expect("an expired cookie", resp, body, 401, api.CodeUnauthorized)
	other := sessions{key: "another-key"}.issue(time.Now())
	resp, body = do("GET", "/v1/backends", "", nil, &http.Cookie{Name: sessionCookie, Value: other})
	expect("a cookie of another API key", resp, body, 401, api.CodeUnauthorized)

	resp, body = do("POST", "/ui/logout", "", nil, session)
	expect("sign out without "+UIHeader, resp, body, 403, api.CodeForbidden)
	resp, body = do("POST", "/ui/logout", "", ui, session)
	expect("sign out", resp, body, 204, "")
	if cs := resp.Cookies(); len(cs) != 1 || cs[0].Name != sessionCookie || cs[0].MaxAge >= 0 {
		t.Errorf("sign out set %v, want %s removed", resp.Header["Set-Cookie"], sessionCookie)
	}
}

// GET /v1/events tells of every backend's changes as its record, and ends
// when the Manager shuts down, so a dashboard left open cannot hold up a
// stop.
func TestAPI_AllEvents(t *testing.T) {
	bin := runtimetest.BuildTestBackend(t)
	m := newProcessManager(t, nil)
	srv := httptest.NewServer(NewAPI(APIConfig{Manager: m}))
	t.Cleanup(srv.Close)

	// Without an API key (berth dev) the dashboard needs no sign-in.
	if resp, err := http.Get(srv.URL + "/ui/session"); err != nil {
		t.Fatal(err)
	} else {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.TrimSpace(string(body)) != `{"key_required":false,"signed_in":true}` {
			t.Errorf("GET /ui/session without an API key: %s", body)
		}
	}

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/v1/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("GET /v1/events: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	// Events arrive as records, in order per backend, states only forward.
	records := make(chan *berth.Backend, 100)
	streamEnded := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		var typ string
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "event: "):
				typ = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: ") && typ == "backend":
				var b berth.Backend
				if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &b); err != nil {
					t.Errorf("bad data %q: %v", line, err)
				}
				records <- &b
			}
		}
		streamEnded <- sc.Err()
	}()
	// seen keeps each backend's latest record: records of different
	// backends may come in any order.
	seen := map[string]*berth.Backend{}
	await := func(id string, state berth.State) *berth.Backend {
		t.Helper()
		for {
			if b := seen[id]; b != nil && b.State == state {
				return b
			}
			select {
			case b := <-records:
				if prev := seen[b.ID]; prev != nil && b.State.Rank() < prev.State.Rank() {
					t.Errorf("backend %s went from %s back to %s on /v1/events", b.ID, prev.State, b.State)
				}
				seen[b.ID] = b
			case <-ctx.Done():
				t.Fatalf("no %s record of %s on /v1/events", state, id)
			}
		}
	}

	spawn := &berth.SpawnConfig{Command: []string{bin}}
	a, err := m.Connect(ctx, &api.ConnectRequest{Key: "watched-a", Spawn: spawn, Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	b, err := m.Connect(ctx, &api.ConnectRequest{Key: "watched-b", Spawn: spawn})
	if err != nil {
		t.Fatal(err)
	}
	if got := await(a.BackendID, berth.StateReady); got.Key != "watched-a" || got.ReadyAt == nil {
		t.Errorf("ready record of a: %+v, want key watched-a and ready_at", got)
	}
	await(b.BackendID, berth.StateReady)
	if err := m.Terminate(ctx, a.BackendID, false); err != nil {
		t.Fatal(err)
	}
	if got := await(a.BackendID, berth.StateTerminated); got.Reason != berth.ReasonRequested {
		t.Errorf("terminated record of a: reason %q, want requested", got.Reason)
	}

	// b is still live: a shutdown terminates it, tells of that, then ends
	// the stream.
	if err := m.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	await(b.BackendID, berth.StateTerminated)
	select {
	case err := <-streamEnded:
		if err != nil {
			t.Errorf("stream ended with %v, want a clean end", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("GET /v1/events still open 10s after the Manager shut down")
	}
}
