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

func psFixture(t *testing.T, gotQuery *string) string {
	one := 1
	created := time.Now().Add(-90 * time.Second)
	list := api.BackendList{Backends: []*berth.Backend{
		{ID: "bk_live", Key: "doc-42", State: berth.StateReady, Runtime: "process", CreatedAt: created},
		{ID: "bk_new", State: berth.StateStarting, Runtime: "docker", CreatedAt: created},
		{ID: "bk_dead", Key: "doc-7", State: berth.StateTerminated, Reason: berth.ReasonCrashed, ExitCode: &one, Runtime: "process", CreatedAt: created},
	}}
	return fakeAPI(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/backends" {
			t.Errorf("path = %q", r.URL.Path)
		}
		*gotQuery = r.URL.RawQuery
		bs := list.Backends
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
	want := "" +
		"ID       KEY     STATE     REASON  AGE  RUNTIME\n" +
		"bk_live  doc-42  ready     -       1m   process\n" +
		"bk_new   -       starting  -       1m   docker\n"
	if out != want {
		t.Errorf("output:\n%s\nwant:\n%s", out, want)
	}
	if query != "live=true" {
		t.Errorf("query = %q, want live=true", query)
	}

	code, out, _ = runCLI(t, "ps", "--all", "--api", url)
	if code != 0 || !strings.Contains(out, "bk_dead  doc-7   terminated  crashed (exit 1)") {
		t.Errorf("--all: exit %d, output:\n%s", code, out)
	}
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
	code, out, _ := runCLI(t, "ps", "--api", url, "--json")
	var got api.BackendList
	if err := json.Unmarshal([]byte(out), &got); err != nil || code != 0 {
		t.Fatalf("exit %d, %v: %s", code, err, out)
	}
	if len(got.Backends) != 2 {
		t.Errorf("got %d backends, want the 2 live ones", len(got.Backends))
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
	_, out, _ = runCLI(t, "ps", "--api", url, "--json")
	if strings.TrimSpace(out) != "{\n  \"backends\": []\n}" {
		t.Errorf("--json output %q", out)
	}
}

func TestPs_Usage(t *testing.T) {
	for _, args := range [][]string{
		{"ps", "--state", "running"},
		{"ps", "doc-42"},
		{"ps", "--bogus"},
	} {
		if code, _, _ := runCLI(t, args...); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
}
