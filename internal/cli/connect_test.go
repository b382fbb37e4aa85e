package cli

import (
	"encoding/json"
	"io"
	"net/http"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
)

// connectAPI fakes POST /v1/connect with resp and the events stream of
// bk_1 with events, and records the last connect request in *got.
func connectAPI(t *testing.T, got *api.ConnectRequest, resp api.ConnectResponse, events ...string) string {
	sse := sseHandler(t, events...)
	return fakeAPI(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/backends/bk_1/logs" {
			io.WriteString(w, "listening\nTraceback (most recent call last):\nImportError: no module named app\n")
			return
		}
		if r.URL.Path != "/v1/connect" {
			sse(w, r)
			return
		}
		*got = api.ConnectRequest{}
		if err := json.NewDecoder(r.Body).Decode(got); err != nil {
			t.Error(err)
		}
		writeJSON(w, http.StatusOK, resp)
	})
}

var spawned = api.ConnectResponse{BackendID: "bk_1", Key: "doc-42", Spawned: true, State: berth.StateScheduled, URL: "http://127.0.0.1:7080/tok/"}

func intp(n int) *int { return &n }

func TestConnect_Request(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want api.ConnectRequest
	}{
		{
			name: "command",
			args: []string{"doc-42", "--", "python3", "-m", "http.server", "${PORT}"},
			want: api.ConnectRequest{Key: "doc-42", Spawn: &berth.SpawnConfig{Command: []string{"python3", "-m", "http.server", "${PORT}"}}},
		},
		{
			name: "flags before and after the key",
			args: []string{"--env", "A=1", "doc-42", "--env", "B=x=y", "--max-idle", "5m", "--lifetime", "3600", "--grace", "0",
				"--startup-timeout", "2m", "--state-mode", "blob", "--user", "alice", "--", "./server", "--port", "$PORT"},
			want: api.ConnectRequest{Key: "doc-42", User: "alice", Spawn: &berth.SpawnConfig{
				Command: []string{"./server", "--port", "$PORT"}, Env: map[string]string{"A": "1", "B": "x=y"},
				MaxIdleSeconds: intp(300), LifetimeSeconds: 3600, GraceSeconds: intp(0), StartupTimeoutSeconds: 120,
				State: berth.StateConfig{Mode: berth.StateModeBlob},
			}},
		},
		{
			name: "image",
			args: []string{"--image", "myapp:1", "doc-42"},
			want: api.ConnectRequest{Key: "doc-42", Spawn: &berth.SpawnConfig{Image: "myapp:1"}},
		},
		{
			name: "runtime",
			args: []string{"--image", "myapp:1", "--runtime", "kubernetes", "doc-42"},
			want: api.ConnectRequest{Key: "doc-42", Spawn: &berth.SpawnConfig{Image: "myapp:1", Runtime: "kubernetes"}},
		},
		{
			name: "existing only",
			args: []string{"doc-42"},
			want: api.ConnectRequest{Key: "doc-42"},
		},
		{
			name: "keyless dash",
			args: []string{"-", "--", "./server"},
			want: api.ConnectRequest{Spawn: &berth.SpawnConfig{Command: []string{"./server"}}},
		},
		{
			name: "no-key",
			args: []string{"--no-key", "--", "./server"},
			want: api.ConnectRequest{Spawn: &berth.SpawnConfig{Command: []string{"./server"}}},
		},
		{
			name: "json waits on the server",
			args: []string{"--json", "--wait", "doc-42"},
			want: api.ConnectRequest{Key: "doc-42", Wait: true},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got api.ConnectRequest
			url := connectAPI(t, &got, spawned)
			code, _, stderr := runCLI(t, append([]string{"connect", "--api", url}, tt.args...)...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			if !reflect.DeepEqual(got, tt.want) {
				gotJ, _ := json.Marshal(got)
				wantJ, _ := json.Marshal(tt.want)
				t.Errorf("request\n got %s\nwant %s", gotJ, wantJ)
			}
		})
	}
}

func TestConnect_Output(t *testing.T) {
	var got api.ConnectRequest
	url := connectAPI(t, &got, spawned)
	code, out, _ := runCLI(t, "connect", "--api", url, "doc-42", "--", "./server")
	want := "Spawned backend bk_1 for key \"doc-42\" — scheduled.\n\n    http://127.0.0.1:7080/tok/\n\n"
	if code != 0 || out != want {
		t.Errorf("exit %d, output %q; want %q", code, out, want)
	}

	existing := api.ConnectResponse{BackendID: "bk_1", Key: "doc-42", State: berth.StateReady, URL: "http://p/t/"}
	url = connectAPI(t, &got, existing)
	_, out, _ = runCLI(t, "connect", "--api", url, "doc-42")
	if !strings.HasPrefix(out, "Connected to backend bk_1 for key \"doc-42\" — ready.") {
		t.Errorf("existing: output %q", out)
	}
}

func TestConnect_JSON(t *testing.T) {
	var got api.ConnectRequest
	url := connectAPI(t, &got, spawned)
	code, out, _ := runCLI(t, "connect", "--api", url, "--json", "doc-42", "--", "./server")
	var resp api.ConnectResponse
	if err := json.Unmarshal([]byte(out), &resp); err != nil || code != 0 {
		t.Fatalf("exit %d, %v: %q", code, err, out)
	}
	if !reflect.DeepEqual(resp, spawned) {
		t.Errorf("printed %+v, want %+v", resp, spawned)
	}
}

// elapsed matches the time column of --wait, whose value varies.
var elapsed = regexp.MustCompile(`(?m)^ *\d+\.\d{3}s  `)

func TestConnect_WaitReady(t *testing.T) {
	var got api.ConnectRequest
	url := connectAPI(t, &got, spawned,
		`{"state":"scheduled","at":"2025-03-01T10:00:00Z"}`,
		`{"state":"starting","at":"2025-03-01T10:00:00.1Z"}`,
		`{"state":"ready","at":"2025-03-01T10:00:01Z"}`,
		`{"state":"terminating","at":"2025-03-01T10:05:00Z"}`, // after ready: not shown
	)
	code, out, stderr := runCLI(t, "connect", "--api", url, "--wait", "doc-42", "--", "./server")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if got.Wait {
		t.Error("--wait without --json should follow events, not block the request")
	}
	want := "T scheduled\nT scheduled → starting\nT starting → ready\n" +
		"Spawned backend bk_1 for key \"doc-42\" — ready.\n\n    http://127.0.0.1:7080/tok/\n\n"
	if out := elapsed.ReplaceAllString(out, "T "); out != want {
		t.Errorf("output:\n%s\nwant:\n%s", out, want)
	}
}

func TestConnect_WaitTerminated(t *testing.T) {
	var got api.ConnectRequest
	url := connectAPI(t, &got, spawned,
		`{"state":"scheduled","at":"2025-03-01T10:00:00Z"}`,
		`{"state":"starting","at":"2025-03-01T10:00:00.1Z"}`,
		`{"state":"terminated","reason":"crashed","exit_code":1,"at":"2025-03-01T10:00:01Z"}`,
	)
	code, out, stderr := runCLI(t, "connect", "--api", url, "--wait", "doc-42", "--", "./server")
	if code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	if strings.Contains(out, "http://") {
		t.Errorf("printed a URL for a terminated backend:\n%s", out)
	}
	if !strings.Contains(out, "starting → terminated  crashed (exit 1)") {
		t.Errorf("output lacks the last change:\n%s", out)
	}
	if want := "Its last output:\n  listening\n  Traceback (most recent call last):\n  ImportError: no module named app\n" +
		"berth connect: backend bk_1 terminated: crashed (exit 1) (see its output: berth logs bk_1)\n"; stderr != want {
		t.Errorf("stderr %q, want %q", stderr, want)
	}
}

// A startup timeout's message already ends with the output's tail (the
// server adds it): the CLI must not print it a second time.
func TestConnect_WaitStartupTimeoutTailOnce(t *testing.T) {
	var got api.ConnectRequest
	url := connectAPI(t, &got, spawned,
		`{"state":"scheduled","at":"2025-03-01T10:00:00Z"}`,
		`{"state":"starting","at":"2025-03-01T10:00:00.1Z"}`,
		`{"state":"terminated","reason":"startup_timeout","message":"nothing answered HTTP on $PORT (8080, probed at 127.0.0.1:8080) within 1s: the program must serve HTTP on the port Berth passes in $PORT; its last output:\nImportError: no module named app","at":"2025-03-01T10:00:01Z"}`,
	)
	code, _, stderr := runCLI(t, "connect", "--api", url, "--wait", "doc-42", "--", "./server")
	if code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	if n := strings.Count(stderr, "ImportError: no module named app"); n != 1 {
		t.Errorf("the output's tail is printed %d times, want once:\n%s", n, stderr)
	}
}

func TestConnect_JSONWaitTerminated(t *testing.T) {
	var got api.ConnectRequest
	dead := api.ConnectResponse{BackendID: "bk_1", Spawned: true, State: berth.StateTerminated, Reason: berth.ReasonStartupTimeout}
	url := connectAPI(t, &got, dead)
	code, out, stderr := runCLI(t, "connect", "--api", url, "--json", "--wait", "doc-42", "--", "./server")
	if code != 1 || !strings.Contains(out, `"state": "terminated"`) || !strings.Contains(stderr, "terminated: startup_timeout") {
		t.Errorf("exit %d, out %q, stderr %q", code, out, stderr)
	}
}

func TestConnect_ServerError(t *testing.T) {
	url := fakeAPI(t, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusBadRequest, api.ErrorBody{Error: api.ErrorDetail{Code: "bad_request", Field: "spawn.env.PORT", Message: "is set by Berth and cannot be overridden"}})
	})
	code, _, stderr := runCLI(t, "connect", "--api", url, "--env", "PORT=1", "doc", "--", "x")
	if want := "berth connect: 400 bad_request: spawn.env.PORT: is set by Berth and cannot be overridden\n"; code != 1 || stderr != want {
		t.Errorf("exit %d, stderr %q; want 1, %q", code, stderr, want)
	}
}

func TestConnect_Usage(t *testing.T) {
	tests := []struct {
		args    []string
		wantErr string
	}{
		{nil, "give the KEY"},
		{[]string{"--", "./server"}, "give the KEY"},
		{[]string{"doc", "./server"}, `unexpected argument "./server"; put the backend's command after --`},
		{[]string{"--no-key", "doc", "--", "x"}, "--no-key contradicts KEY"},
		{[]string{"-"}, "a backend without a key is always new"},
		{[]string{"--no-key"}, "a backend without a key is always new"},
		{[]string{"bad key", "--", "x"}, `KEY "bad key": character ' ' at 3 is not allowed`},
		{[]string{"--env", "A=1", "doc"}, "--env only applies to a new backend"},
		{[]string{"--env", "NOEQUALS", "doc", "--", "x"}, "want K=V"},
		{[]string{"--max-idle", "5 minutes", "doc", "--", "x"}, "want seconds or a duration"},
		{[]string{"--grace", "1.5s", "doc", "--", "x"}, "whole seconds"},
		{[]string{"--lifetime", "-1", "doc", "--", "x"}, "must not be negative"},
		{[]string{"--state-mode", "disk", "doc", "--", "x"}, `--state-mode "disk"`},
		{[]string{"--runtime", "podman", "doc", "--", "x"}, `--runtime "podman": use process, docker or kubernetes`},
		{[]string{"--runtime", "docker", "doc"}, "--runtime only applies to a new backend"},
	}
	for _, tt := range tests {
		code, _, stderr := runCLI(t, append([]string{"connect", "--api", "http://127.0.0.1:1"}, tt.args...)...)
		if code != 2 || !strings.Contains(stderr, tt.wantErr) {
			t.Errorf("connect %q: exit %d, stderr %q; want 2 and %q", tt.args, code, stderr, tt.wantErr)
		}
	}
}

// TestConnect_WaitTTY: on a terminal, --wait draws one live line (redrawn
// in place: carriage return, clear line) and clears it before the result.
func TestConnect_WaitTTY(t *testing.T) {
	old := isTerminal
	isTerminal = func(io.Writer) bool { return true }
	t.Cleanup(func() { isTerminal = old })
	var got api.ConnectRequest
	url := connectAPI(t, &got, spawned,
		`{"state":"scheduled","at":"2025-03-01T10:00:00Z"}`,
		`{"state":"starting","at":"2025-03-01T10:00:00.1Z"}`,
		`{"state":"ready","at":"2025-03-01T10:00:01Z"}`,
	)
	code, out, stderr := runCLI(t, "connect", "--api", url, "--wait", "doc-42", "--", "./server")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	draws := regexp.MustCompile(`\r\x1b\[K. bk_1  ([^\r]*)  \d+\.\ds`).FindAllStringSubmatch(out, -1)
	var shown []string
	for _, d := range draws {
		if len(shown) == 0 || shown[len(shown)-1] != d[1] {
			shown = append(shown, d[1])
		}
	}
	if want := []string{"scheduled", "scheduled → starting", "starting → ready"}; !reflect.DeepEqual(shown, want) {
		t.Errorf("live line showed %q, want %q; output %q", shown, want, out)
	}
	if live := out[:strings.LastIndex(out, "\x1b[K")]; strings.Contains(live, "\n") {
		t.Errorf("the live line broke into lines before it was cleared: %q", out)
	}
	if want := "\r\x1b[KSpawned backend bk_1"; !strings.Contains(out, want) {
		t.Errorf("the result does not start on a cleared line: %q", out)
	}
}

func TestProgress_Line(t *testing.T) {
	p := &progress{id: "bk_1", change: "scheduled → starting"}
	tests := []struct {
		elapsed time.Duration
		want    string
	}{
		{0, "\r\x1b[K⠋ bk_1  scheduled → starting  0.0s"},
		{250 * time.Millisecond, "\r\x1b[K⠹ bk_1  scheduled → starting  0.2s"},
		{12300 * time.Millisecond, "\r\x1b[K⠸ bk_1  scheduled → starting  12.3s"},
	}
	for _, tt := range tests {
		if got := p.line(tt.elapsed); got != tt.want {
			t.Errorf("line(%v) = %q, want %q", tt.elapsed, got, tt.want)
		}
	}
}

// TestConnect_WaitPiped: piped, --wait prints plain lines, never a
// terminal control sequence.
func TestConnect_WaitPiped(t *testing.T) {
	var got api.ConnectRequest
	url := connectAPI(t, &got, spawned, `{"state":"ready","at":"2025-03-01T10:00:01Z"}`)
	_, out, _ := runCLI(t, "connect", "--api", url, "--wait", "doc-42", "--", "./server")
	if strings.ContainsAny(out, "\r\x1b") {
		t.Errorf("piped output has terminal controls: %q", out)
	}
}

// TestConnect_JSONWaitError: with --json, an error answer's body (a failed
// start's reason, exit code and output) is printed as it came.
func TestConnect_JSONWaitError(t *testing.T) {
	body := `{"error":{"code":"spawn_failed","message":"exec: \"pyhton3\": not found"},"reason":"spawn_failed","output_tail":["a","b"]}`
	url := fakeAPI(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnprocessableEntity)
		io.WriteString(w, body)
	})
	code, out, stderr := runCLI(t, "connect", "--api", url, "--json", "--wait", "doc", "--", "pyhton3")
	if code != 1 || !strings.Contains(stderr, `spawn_failed: exec: "pyhton3": not found`) {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
	var printed, sent map[string]any
	json.Unmarshal([]byte(out), &printed)
	json.Unmarshal([]byte(body), &sent)
	if !reflect.DeepEqual(printed, sent) {
		t.Errorf("printed %q, want the body %s", out, body)
	}
}
