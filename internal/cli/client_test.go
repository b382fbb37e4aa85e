package cli

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"
)

// fakeAPI serves h as the control API and returns its URL.
func fakeAPI(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}

// runCLI runs the berth command line and returns its exit code and output.
func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut strings.Builder
	code = Run(context.Background(), args, Stdio{In: strings.NewReader(""), Out: &out, Err: &errOut})
	return code, out.String(), errOut.String()
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]any{"error": map[string]string{"code": code, "message": msg}})
}

func TestClientOptions_Unreachable(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close() // nothing listens here any more

	for _, args := range [][]string{
		{"ps", "--api", url},
		{"logs", "--api", url, "bk_1"},
		{"terminate", "--api", url, "bk_1"},
		{"events", "--api", url, "bk_1"},
		{"connect", "--api", url, "doc", "--", "./server"},
	} {
		code, _, stderr := runCLI(t, args...)
		want := "cannot reach Berth at " + url + " — is `berth dev` running?"
		if code != 1 || !strings.Contains(stderr, want) {
			t.Errorf("%v: exit %d, stderr %q; want exit 1 and %q", args, code, stderr, want)
		}
	}
}

// TestClientOptions_Env: every verb that talks to the API takes its
// address from BERTH_URL (or the older BERTH_API) and sends BERTH_API_KEY.
func TestClientOptions_Env(t *testing.T) {
	verbs := [][]string{
		{"ps"},
		{"get", "bk_1"},
		{"logs", "bk_1"},
		{"events", "bk_1"},
		{"terminate", "bk_1"},
		{"connect", "doc", "--", "./server"},
		{"state", "ls", "doc"},
		{"state", "get", "doc"},
		{"state", "restore", "doc", "--version", "v1"},
	}
	for _, name := range []string{"BERTH_URL", "BERTH_API"} {
		for _, args := range verbs {
			var auth string
			url := fakeAPI(t, func(w http.ResponseWriter, r *http.Request) {
				auth = r.Header.Get("Authorization")
				writeError(w, http.StatusTeapot, "teapot", "answered")
			})
			t.Setenv("BERTH_URL", "")
			t.Setenv("BERTH_API", "")
			t.Setenv(name, url)
			t.Setenv("BERTH_API_KEY", "s3cret")
			code, _, stderr := runCLI(t, args...)
			if code != 1 || !strings.Contains(stderr, "418 teapot: answered") {
				t.Errorf("%s %v: exit %d, stderr %q; want the server's answer", name, args, code, stderr)
			}
			if auth != "Bearer s3cret" {
				t.Errorf("%s %v: Authorization = %q, want %q", name, args, auth, "Bearer s3cret")
			}
		}
	}
}

func TestClientOptions_Unauthorized(t *testing.T) {
	url := fakeAPI(t, func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusUnauthorized, "unauthorized", "missing API key")
	})
	code, _, stderr := runCLI(t, "ps", "--api", url)
	if code != 1 || !strings.Contains(stderr, "401 unauthorized: missing API key") || !strings.Contains(stderr, "--api-key or BERTH_API_KEY") {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
}

func TestFlags_Parse(t *testing.T) {
	tests := []struct {
		args     []string
		wantRest []string
		wantF    bool
	}{
		{[]string{"bk_1"}, []string{"bk_1"}, false},
		{[]string{"-f", "bk_1"}, []string{"bk_1"}, true},
		{[]string{"bk_1", "-f"}, []string{"bk_1"}, true},
		{[]string{"a", "-f", "b"}, []string{"a", "b"}, true},
		{[]string{"-", "-f"}, []string{"-"}, true},
		{[]string{"a", "--", "-f"}, []string{"a", "-f"}, false},
		{nil, nil, false},
	}
	for _, tt := range tests {
		fs := newFlags("t", "t", Stdio{Out: io.Discard})
		f := fs.Bool("f", false, "")
		rest, err := fs.parse(tt.args)
		if err != nil {
			t.Fatalf("%q: %v", tt.args, err)
		}
		if !reflect.DeepEqual(rest, tt.wantRest) || *f != tt.wantF {
			t.Errorf("%q: rest %q, f %v; want %q, %v", tt.args, rest, *f, tt.wantRest, tt.wantF)
		}
	}
}

func TestFlags_Parse_BadFlagIsUsage(t *testing.T) {
	fs := newFlags("t", "t", Stdio{Out: io.Discard})
	_, err := fs.parse([]string{"x", "--nope"})
	var ue *usageError
	if !errors.As(err, &ue) {
		t.Errorf("err = %v (%T), want a usage error", err, err)
	}
}

func TestSince(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{-time.Second, "0s"},
		{45 * time.Second, "45s"},
		{12*time.Minute + 59*time.Second, "12m"},
		{3 * time.Hour, "3h"},
		{47 * time.Hour, "47h"},
		{5 * 24 * time.Hour, "5d"},
	}
	for _, tt := range tests {
		if got := since(tt.d); got != tt.want {
			t.Errorf("since(%v) = %q, want %q", tt.d, got, tt.want)
		}
	}
}
