package server

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestLastLines(t *testing.T) {
	tests := []struct {
		name, out string
		n, max    int
		want      string
	}{
		{"empty", "", 3, 100, ""},
		{"fewer lines than asked", "a\nb\n", 5, 100, "a\nb"},
		{"exactly n", "a\nb\nc", 3, 100, "a\nb\nc"},
		{"the last n", "a\nb\nc\nd\n", 2, 100, "c\nd"},
		{"no final newline", "a\nb\nc", 1, 100, "c"},
		{"blank lines at the end", "a\nb\n\n\n", 1, 100, "b"},
		{"cut at a line start within max", "aaaa\nbbbb\ncc\n", 3, 8, "bbbb\ncc"},
		{"cut mid-line", "aaaa\nbbbb\ncc\n", 3, 6, "cc"},
		{"one line longer than max", "abcdefgh", 1, 4, "efgh"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := lastLines([]byte(tt.out), tt.n, tt.max); got != tt.want {
				t.Errorf("lastLines(%q, %d, %d) = %q, want %q", tt.out, tt.n, tt.max, got, tt.want)
			}
		})
	}
}

func TestStartupTimeoutMessage(t *testing.T) {
	got := startupTimeoutMessage("127.0.0.1:41234", 60*time.Second, "Serving HTTP on 0.0.0.0 port 8000")
	for _, want := range []string{"nothing answered HTTP on $PORT (41234", "within 60s", "last output:\nServing HTTP on 0.0.0.0 port 8000"} {
		if !strings.Contains(got, want) {
			t.Errorf("message %q lacks %q", got, want)
		}
	}
	if got := startupTimeoutMessage("127.0.0.1:41234", time.Second, ""); !strings.Contains(got, "printed nothing") {
		t.Errorf("message %q does not say the program printed nothing", got)
	}
}

func TestAllowed(t *testing.T) {
	mux := http.NewServeMux()
	for _, p := range []string{"POST /v1/connect", "GET /v1/backends/{id}", "POST /v1/backends/{id}/terminate", "/"} {
		mux.HandleFunc(p, func(http.ResponseWriter, *http.Request) {})
	}
	tests := []struct{ method, path, want string }{
		{"GET", "/v1/connect", "POST"},
		{"DELETE", "/v1/backends/bk_1", "GET, HEAD"},
		{"GET", "/v1/backends/bk_1/terminate", "POST"},
		{"GET", "/v1/nothing", ""},
	}
	for _, tt := range tests {
		r := httptest.NewRequest(tt.method, tt.path, nil)
		if got := strings.Join(allowed(mux, r), ", "); got != tt.want {
			t.Errorf("allowed(%s %s) = %q, want %q", tt.method, tt.path, got, tt.want)
		}
	}
}
