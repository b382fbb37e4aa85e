package cli

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth/api"
)

// sseHandler serves the given state events as the events stream of bk_1.
func sseHandler(t *testing.T, events ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/backends/bk_1/events" {
			t.Errorf("path = %q", r.URL.Path)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, ": stream of bk_1\n\n")
		for _, e := range events {
			fmt.Fprintf(w, "event: state\ndata: %s\n\n", e)
		}
	}
}

func localTime(t *testing.T, rfc3339 string) string {
	at, err := time.Parse(time.RFC3339Nano, rfc3339)
	if err != nil {
		t.Fatal(err)
	}
	return at.Local().Format(eventTime)
}

func TestEvents(t *testing.T) {
	url := fakeAPI(t, sseHandler(t,
		`{"state":"scheduled","at":"2025-03-01T10:00:00Z"}`,
		`{"state":"ready","at":"2025-03-01T10:00:00.25Z"}`,
		`{"state":"terminated","reason":"crashed","exit_code":2,"message":"out of memory","at":"2025-03-01T10:05:00Z"}`,
	))
	code, out, stderr := runCLI(t, "events", "--api", url, "bk_1")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	want := localTime(t, "2025-03-01T10:00:00Z") + "  scheduled\n" +
		localTime(t, "2025-03-01T10:00:00.25Z") + "  ready\n" +
		localTime(t, "2025-03-01T10:05:00Z") + "  terminated   crashed (exit 2)  out of memory\n"
	if out != want {
		t.Errorf("output:\n%s\nwant:\n%s", out, want)
	}
}

func TestEvents_StreamCut(t *testing.T) {
	url := fakeAPI(t, sseHandler(t, `{"state":"ready","at":"2025-03-01T10:00:00Z"}`))
	code, _, stderr := runCLI(t, "events", "--api", url, "bk_1")
	if code != 1 || !strings.Contains(stderr, "stream ended before the backend terminated") {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
}

func TestPrintEvent_UnparsedTime(t *testing.T) {
	var b strings.Builder
	printEvent(&b, api.StateEvent{State: "ready", At: "yesterday"})
	if want := "yesterday  ready\n"; b.String() != want {
		t.Errorf("got %q, want %q", b.String(), want)
	}
}

func TestEvents_JSON(t *testing.T) {
	url := fakeAPI(t, sseHandler(t,
		`{"state":"scheduled","at":"2025-03-01T10:00:00Z"}`,
		`{"state":"terminated","reason":"crashed","exit_code":2,"message":"out of memory","at":"2025-03-01T10:05:00Z"}`,
	))
	code, out, stderr := runCLI(t, "events", "--api", url, "--output", "json", "bk_1")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	golden(t, "events.json.golden", out)
}
