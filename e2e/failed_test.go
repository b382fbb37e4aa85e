package e2e

import (
	"bytes"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
)

// TestConnectWaitFailed: a connect that waits for a backend which ends
// instead of becoming ready answers 502 backend_failed with why, the exit
// code and the end of its output, and no URL (issue 20).
func TestConnectWaitFailed(t *testing.T) {
	t.Parallel()
	s := start(t, opts{})
	tests := []struct {
		name     string
		spawn    *berth.SpawnConfig
		reason   berth.Reason
		code     *int
		cause    []string // in the message
		logsTail string   // the end of logs
	}{
		{"misspelled command", &berth.SpawnConfig{Command: []string{"pyhton3", "-m", "http.server", "${PORT}"}},
			berth.ReasonSpawnFailed, nil, []string{"pyhton3", "not found"}, ""},
		{"crash before ready", tb(map[string]string{"TB_LOG_LINES": "30", "TB_EXIT_AFTER_MS": "200", "TB_EXIT_CODE": "3", "TB_READY_DELAY_MS": "20000"}),
			berth.ReasonCrashed, ptr(3), []string{"exit code 3"}, "tb stderr 30"},
		{"exit 0 before ready", tb(map[string]string{"TB_LOG_LINES": "2", "TB_EXIT_AFTER_MS": "200", "TB_EXIT_CODE": "0", "TB_READY_DELAY_MS": "20000"}),
			berth.ReasonExited, ptr(0), []string{"exit code 0"}, "tb stderr 2"},
		{"never listens on $PORT", &berth.SpawnConfig{
			Command:               []string{"sh", "-c", "echo starting; echo serving on port 8000 instead; exec sleep 60"},
			StartupTimeoutSeconds: 1, GraceSeconds: ptr(1)},
			berth.ReasonStartupTimeout, nil, []string{"nothing answered HTTP on $PORT", "within 1s", "serving on port 8000 instead"}, "serving on port 8000 instead"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := s.connectFailed(t, api.ConnectRequest{Spawn: tt.spawn, Wait: true, WaitTimeoutSeconds: 20})
			if e.Reason != tt.reason {
				t.Errorf("reason %q, want %q", e.Reason, tt.reason)
			}
			if fmtCode(e.ExitCode) != fmtCode(tt.code) {
				t.Errorf("exit code %s, want %s", fmtCode(e.ExitCode), fmtCode(tt.code))
			}
			for _, want := range tt.cause {
				if !strings.Contains(e.Message, want) {
					t.Errorf("message %q does not say %q", e.Message, want)
				}
			}
			if !strings.HasSuffix(e.Logs, tt.logsTail) {
				t.Errorf("logs %q do not end with %q", e.Logs, tt.logsTail)
			}
			if n := strings.Count(e.Logs, "\n") + 1; e.Logs != "" && n > 20 {
				t.Errorf("logs have %d lines, want the last 20 at most", n)
			}
			// The backend's record and history say the same.
			b := s.waitTerminated(t, e.BackendID, 10*time.Second)
			if b.Reason != tt.reason || fmtCode(b.ExitCode) != fmtCode(tt.code) {
				t.Errorf("backend %s: reason %q exit %s, want %q exit %s", b.ID, b.Reason, fmtCode(b.ExitCode), tt.reason, fmtCode(tt.code))
			}
			evs := s.history(t, e.BackendID)
			if last := evs[len(evs)-1]; !strings.Contains(e.Message, last.Message) || last.Message == "" {
				t.Errorf("terminated event says %q; the error says %q", last.Message, e.Message)
			}
		})
	}

	// Without wait, the connect answers at once as before: the spawn is
	// under way, and the events tell how it ends.
	t.Run("without wait", func(t *testing.T) {
		t.Parallel()
		c := s.connect(t, api.ConnectRequest{Spawn: &berth.SpawnConfig{Command: []string{"/nonexistent/e2e-program"}}})
		if !c.Spawned || c.URL == "" {
			t.Errorf("connect without wait: %+v, want spawned with a URL", c)
		}
		if b := s.waitTerminated(t, c.BackendID, 10*time.Second); b.Reason != berth.ReasonSpawnFailed {
			t.Errorf("reason %q, want spawn_failed", b.Reason)
		}
	})
}

// TestStartupTimeoutHint: a backend that never answers HTTP on $PORT ends
// in startup_timeout with a history that says so, and shows its output.
func TestStartupTimeoutHint(t *testing.T) {
	t.Parallel()
	s := start(t, opts{})
	c := s.connect(t, api.ConnectRequest{Spawn: &berth.SpawnConfig{
		Command:               []string{"sh", "-c", "echo listening on 127.0.0.1:9; exec sleep 60"},
		StartupTimeoutSeconds: 1, GraceSeconds: ptr(1)}})
	b := s.waitTerminated(t, c.BackendID, 15*time.Second)
	if b.Reason != berth.ReasonStartupTimeout {
		t.Fatalf("reason %q, want startup_timeout", b.Reason)
	}
	evs := s.history(t, c.BackendID)
	var terminating, terminated string
	for _, e := range evs {
		switch e.State {
		case berth.StateTerminating:
			terminating = e.Message
		case berth.StateTerminated:
			terminated = e.Message
		}
	}
	for _, msg := range []string{terminating, terminated} {
		for _, want := range []string{"nothing answered HTTP on $PORT", "within 1s", "listening on 127.0.0.1:9"} {
			if !strings.Contains(msg, want) {
				t.Errorf("event message %q does not say %q", msg, want)
			}
		}
	}
}

// TestMethodNotAllowed: a known path with another method answers 405 with
// Allow and the JSON error body; an unknown path 404; both after the API key.
func TestMethodNotAllowed(t *testing.T) {
	t.Parallel()
	s := start(t, opts{serve: true, apiKey: "e2e-405-key"})
	tests := []struct{ method, path, allow string }{
		{http.MethodGet, "/v1/connect", "POST"},
		{http.MethodPut, "/v1/connect", "POST"},
		{http.MethodDelete, "/v1/backends/bk_nope", "GET, HEAD"},
		{http.MethodGet, "/v1/backends/bk_nope/terminate", "POST"},
		{http.MethodPost, "/v1/backends", "GET, HEAD"},
		{http.MethodPost, "/v1/state", "GET, HEAD"},
		{http.MethodGet, "/v1/state/restore", "POST"},
		{http.MethodPost, "/v1/openapi.json", "GET, HEAD"},
	}
	for _, tt := range tests {
		resp, body := s.do(t, tt.method, tt.path, "")
		if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != tt.allow {
			t.Errorf("%s %s: %d Allow %q %s, want 405 Allow %q", tt.method, tt.path, resp.StatusCode, resp.Header.Get("Allow"), body, tt.allow)
			continue
		}
		if e := apiError(t, body); e.Code != api.CodeMethodNotAllowed || !strings.Contains(e.Message, strings.ReplaceAll(tt.allow, ", ", " or ")) {
			t.Errorf("%s %s: error %+v, want method_not_allowed naming %s", tt.method, tt.path, e, tt.allow)
		}
	}
	if resp, body := s.do(t, http.MethodGet, "/v1/nothing", ""); resp.StatusCode != http.StatusNotFound || apiError(t, body).Code != api.CodeNotFound {
		t.Errorf("GET /v1/nothing: %d %s, want 404 not_found", resp.StatusCode, body)
	}
	// Without the key, nothing is told about which routes exist.
	req, _ := http.NewRequestWithContext(testCtx(t, 10*time.Second), http.MethodGet, s.API+"/v1/connect", nil)
	if resp, body := send(t, req); resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("Allow") != "" {
		t.Errorf("GET /v1/connect without the key: %d Allow %q %s, want 401 and no Allow", resp.StatusCode, resp.Header.Get("Allow"), body)
	}
}

// TestOpenAPIServed: the document is served as written, behind the API key.
func TestOpenAPIServed(t *testing.T) {
	t.Parallel()
	s := start(t, opts{serve: true, apiKey: "e2e-openapi-key"})
	resp, body := s.do(t, http.MethodGet, "/v1/openapi.json", "")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" || !bytes.Equal(body, api.OpenAPI) {
		t.Errorf("GET /v1/openapi.json: %d %q, %d bytes; want 200 application/json and api/openapi.json (%d bytes)",
			resp.StatusCode, resp.Header.Get("Content-Type"), len(body), len(api.OpenAPI))
	}
	req, _ := http.NewRequestWithContext(testCtx(t, 10*time.Second), http.MethodGet, s.API+"/v1/openapi.json", nil)
	if resp, body := send(t, req); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("GET /v1/openapi.json without the key: %d %s, want 401", resp.StatusCode, body)
	}
}
