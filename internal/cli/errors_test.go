package cli

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// TestErrors_Golden: every message a mistake earns, as a person sees it:
// one line on standard error that says what to do, and exit 2 for a
// mistake on the command line, 1 for a failure.
func TestErrors_Golden(t *testing.T) {
	api := fakeAPI(t, func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Header.Get("Authorization") == "" && r.URL.Query().Get("key") == "needs-key":
			writeError(w, http.StatusUnauthorized, "unauthorized", "missing API key")
		case r.URL.Path == "/v1/backends":
			writeError(w, http.StatusInternalServerError, "internal", "internal error")
		case r.URL.Path == "/v1/connect":
			writeError(w, http.StatusNotFound, "not_found", "key doc-9 is not held and no spawn was given")
		case r.URL.Path == "/v1/state/data":
			writeError(w, http.StatusNotFound, "not_found", "no saved state for doc-1")
		default:
			writeError(w, http.StatusNotFound, "not_found", "no backend bk_gone")
		}
	})
	lines := [][]string{
		{"pss"},
		{"bogus"},
		{"ps", "--jsno"},
		{"ps", "--stat", "ready"},
		{"ps", "--zzz"},
		{"ps", "--output", "yaml"},
		{"ps", "--state"},
		{"ps", "--state", "running"},
		{"ps", "doc-42"},
		{"logs"},
		{"logs", "a", "b"},
		{"connect"},
		{"connect", "doc-42", "python3", "-m", "http.server", "${PORT}"},
		{"connect", "--wait", "doc-42", "python3", "app.py", "--port", "8080"},
		{"connect", "doc-42", "-m"},
		{"connect", "doc-42", "./server"},
		{"connect", "--max-idle", "5 minutes", "doc", "--", "x"},
		{"connect", "--env", "A=1", "doc"},
		{"state"},
		{"state", "lss"},
		{"state", "restore", "doc-1"},
		{"completion", "fish"},
		{"version", "extra"},
		{"get", "--api", "http://127.0.0.1:1", "bk_1"},
		{"get", "--api", "$API", "bk_gone"},
		{"logs", "--api", "$API", "bk_gone"},
		{"terminate", "--api", "$API", "bk_gone"},
		{"state", "get", "--api", "$API", "doc-1"},
		{"connect", "--api", "$API", "doc-9"},
		{"ps", "--api", "$API"},
		{"ps", "--api", "$API", "--key", "needs-key"},
	}
	var b strings.Builder
	for _, args := range lines {
		run := make([]string, len(args))
		for i, a := range args {
			run[i] = strings.ReplaceAll(a, "$API", api)
		}
		code, out, stderr := runCLI(t, run...)
		if out != "" {
			t.Errorf("berth %s: printed %q on standard output; errors go to standard error", strings.Join(args, " "), out)
		}
		if n := strings.Count(stderr, "berth"); n == 0 {
			t.Errorf("berth %s: stderr %q does not say which command failed", strings.Join(args, " "), stderr)
		}
		fmt.Fprintf(&b, "$ berth %s\n%s(exit %d)\n\n", shellJoin(args), strings.ReplaceAll(stderr, api, "$API"), code)
	}
	golden(t, "errors.golden", b.String())
}

// TestHelp: -h prints the usage and flags once, on standard output, and
// exits 0.
func TestHelp(t *testing.T) {
	for _, env := range []string{"BERTH_URL", "BERTH_API", "BERTH_API_KEY"} {
		t.Setenv(env, "") // defaults shown in the help come from them
	}
	code, out, stderr := runCLI(t, "ps", "-h")
	if code != 0 || stderr != "" {
		t.Errorf("exit %d, stderr %q; want 0 and nothing", code, stderr)
	}
	golden(t, "ps-help.golden", out)
	if code, out, _ := runCLI(t, "help"); code != 0 || !strings.Contains(out, "  ps          list backends") {
		t.Errorf("berth help: exit %d, output %q", code, out)
	}
}
