package cli

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
)

func at(d time.Duration) *time.Time {
	t := fixedNow.Add(-d)
	return &t
}

// psBackends are three backends of every kind a table shows: live with a
// key and traffic, starting without a key, terminated with an exit code.
func psBackends() []*berth.Backend {
	one := 1
	return []*berth.Backend{
		{ID: "bk_live", Key: "doc-42", State: berth.StateReady, Runtime: "process", CreatedAt: *at(90 * time.Second), ReadyAt: at(89 * time.Second), LastActiveAt: at(3 * time.Second),
			Spawn: berth.SpawnConfig{Command: []string{"python3", "-m", "http.server", "${PORT}"}}},
		{ID: "bk_new", State: berth.StateStarting, Runtime: "docker", CreatedAt: *at(2 * time.Second),
			Spawn: berth.SpawnConfig{Image: "berth-demo:latest"}},
		{ID: "bk_dead", Key: "doc-7", State: berth.StateTerminated, Reason: berth.ReasonCrashed, ExitCode: &one, Runtime: "process", CreatedAt: *at(26 * time.Hour), TerminatedAt: at(25 * time.Hour),
			Spawn: berth.SpawnConfig{Command: []string{"/srv/app/bin/a-rather-long-server-name", "--listen", "127.0.0.1:${PORT}"}}},
	}
}

func psFixture(t *testing.T, gotQuery *string) string {
	setClock(t)
	return fakeAPI(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/backends" {
			t.Errorf("path = %q", r.URL.Path)
		}
		*gotQuery = r.URL.RawQuery
		bs := psBackends()
		if r.URL.Query().Get("live") == "true" {
			bs = bs[:2]
		}
		writeJSON(w, http.StatusOK, api.BackendList{Backends: bs})
	})
}

func TestPs(t *testing.T) {
	var query string
	url := psFixture(t, &query)

	code, out, stderr := runCLI(t, "ps", "--api", url)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	golden(t, "ps.golden", out)
	if query != "live=true" {
		t.Errorf("query = %q, want live=true", query)
	}

	code, out, _ = runCLI(t, "ps", "--all", "--api", url)
	if code != 0 {
		t.Fatalf("--all: exit %d", code)
	}
	golden(t, "ps-all.golden", out)
	if query != "" {
		t.Errorf("--all: query = %q, want none", query)
	}
}

func TestPs_Filters(t *testing.T) {
	var query string
	url := psFixture(t, &query)
	if code, _, stderr := runCLI(t, "ps", "--api", url, "--key", "a/b", "--state", "terminated"); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if want := "key=a%2Fb&state=terminated"; query != want {
		t.Errorf("query = %q, want %q", query, want)
	}
}

func TestPs_JSON(t *testing.T) {
	var query string
	url := psFixture(t, &query)
	for _, flag := range [][]string{{"--json"}, {"--output", "json"}, {"--output=json"}} {
		code, out, _ := runCLI(t, append([]string{"ps", "--api", url}, flag...)...)
		var got api.BackendList
		if err := json.Unmarshal([]byte(out), &got); err != nil || code != 0 {
			t.Fatalf("%v: exit %d, %v: %s", flag, code, err, out)
		}
		golden(t, "ps.json.golden", out)
	}
}

func TestPs_Quiet(t *testing.T) {
	var query string
	url := psFixture(t, &query)
	code, out, _ := runCLI(t, "ps", "-q", "--all", "--api", url)
	if want := "bk_live\nbk_new\nbk_dead\n"; code != 0 || out != want {
		t.Errorf("exit %d, output %q; want %q", code, out, want)
	}
}

func TestPs_Empty(t *testing.T) {
	url := fakeAPI(t, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, api.BackendList{})
	})
	code, out, _ := runCLI(t, "ps", "--api", url)
	if code != 0 || !strings.HasPrefix(out, "No live backends.") {
		t.Errorf("exit %d, output %q", code, out)
	}
	_, out, _ = runCLI(t, "ps", "--api", url, "--output", "json")
	if strings.TrimSpace(out) != "{\n  \"backends\": []\n}" {
		t.Errorf("--output json: output %q", out)
	}
}

func TestPs_Usage(t *testing.T) {
	for _, args := range [][]string{
		{"ps", "--state", "running"},
		{"ps", "doc-42"},
		{"ps", "--bogus"},
		{"ps", "--output", "yaml"},
	} {
		if code, _, _ := runCLI(t, args...); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
}
