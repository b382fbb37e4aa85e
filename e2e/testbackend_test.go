package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"testing"
)

// What internal/testbackend answers, as its doc comment describes it.

// tbEcho is testbackend's /echo answer: the request as the backend got it.
type tbEcho struct {
	Method  string      `json:"method"`
	URL     string      `json:"url"`
	Headers http.Header `json:"headers"`
	Body    string      `json:"body"`
}

// echo GETs backendURL+"echo"+rest through the proxy and returns what the
// backend saw.
func echo(t *testing.T, backendURL, rest string, hdr http.Header) tbEcho {
	t.Helper()
	resp, body := get(t, backendURL+"echo"+rest, hdr)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %secho%s: %d %s", backendURL, rest, resp.StatusCode, body)
	}
	var e tbEcho
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("testbackend /echo answered %q: %v", body, err)
	}
	return e
}

// tbEnv returns the backend's whole environment (testbackend's GET /).
func tbEnv(t *testing.T, backendURL string) map[string]string {
	t.Helper()
	resp, body := get(t, backendURL, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", backendURL, resp.StatusCode, body)
	}
	var env map[string]string
	if err := json.Unmarshal(body, &env); err != nil {
		t.Fatalf("testbackend / answered %q: %v", body, err)
	}
	return env
}

// tbLogLines is what TB_LOG_LINES=n prints at start.
func tbLogLines(n int) []string {
	var out []string
	for i := 1; i <= n; i++ {
		out = append(out, fmt.Sprintf("tb stdout %d", i), fmt.Sprintf("tb stderr %d", i))
	}
	return out
}

// tbSay makes the backend print line to its stdout.
func tbSay(t *testing.T, backendURL, line string) {
	t.Helper()
	resp, body := get(t, backendURL+"log?line="+url.QueryEscape(line), nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /log: %d %s", resp.StatusCode, body)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
