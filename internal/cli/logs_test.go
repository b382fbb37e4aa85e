package cli

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
)

func TestLogs(t *testing.T) {
	url := fakeAPI(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/backends/bk_1/logs" {
			writeError(w, http.StatusNotFound, "not_found", "backend bk_2 not found")
			return
		}
		io.WriteString(w, "follow="+r.URL.Query().Get("follow")+"\nhello\n")
	})
	tests := []struct {
		args     []string
		wantCode int
		wantOut  string
		wantErr  string
	}{
		{[]string{"bk_1"}, 0, "follow=\nhello\n", ""},
		{[]string{"bk_1", "-f"}, 0, "follow=true\nhello\n", ""},
		{[]string{"-f", "bk_1"}, 0, "follow=true\nhello\n", ""},
		{[]string{"--output", "json", "bk_1"}, 0, `{"backend_id":"bk_1","line":"follow="}` + "\n" + `{"backend_id":"bk_1","line":"hello"}` + "\n", ""},
		{[]string{"--output", "yaml", "bk_1"}, 2, "", "use text or json"},
		{[]string{"bk_2"}, 1, "", "berth logs: 404 not_found: backend bk_2 not found (berth ps --all lists the backends)\n"},
		{nil, 2, "", "berth logs: which backend? usage: berth logs [-f] [--output text|json] ID (list them with: berth ps)\n"},
		{[]string{"a", "b"}, 2, "", "expected one backend id"},
	}
	for _, tt := range tests {
		code, out, stderr := runCLI(t, append([]string{"logs", "--api", url}, tt.args...)...)
		if code != tt.wantCode || out != tt.wantOut || !strings.Contains(stderr, tt.wantErr) {
			t.Errorf("logs %q: exit %d, out %q, err %q; want %d, %q, %q", tt.args, code, out, stderr, tt.wantCode, tt.wantOut, tt.wantErr)
		}
	}
}

func TestJSONLines_SplitsAcrossWrites(t *testing.T) {
	var b strings.Builder
	l := &jsonLines{enc: json.NewEncoder(&b), id: "bk_1"}
	for _, chunk := range []string{"he", "llo\r\nwor", "ld\n\nlast"} {
		if _, err := l.Write([]byte(chunk)); err != nil {
			t.Fatal(err)
		}
	}
	l.flush()
	want := `{"backend_id":"bk_1","line":"hello"}
{"backend_id":"bk_1","line":"world"}
{"backend_id":"bk_1","line":""}
{"backend_id":"bk_1","line":"last"}
`
	if b.String() != want {
		t.Errorf("got %q, want %q", b.String(), want)
	}
}
