package proxy

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// pathBackends proxies bk_1 and bk_2 to backends that record the request
// targets they get.
type pathBackends struct {
	f    *fixture
	mu   sync.Mutex
	seen map[string][]string // by backend: "METHOD target Host"
}

func newPathBackends(t *testing.T) *pathBackends {
	pb := &pathBackends{seen: map[string][]string{}}
	record := func(id string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			pb.mu.Lock()
			pb.seen[id] = append(pb.seen[id], r.Method+" "+r.RequestURI+" "+r.Host)
			pb.mu.Unlock()
			io.WriteString(w, r.RequestURI)
		})
	}
	pb.f = newFixture(t, record("bk_1"))
	be2 := httptest.NewServer(record("bk_2"))
	t.Cleanup(be2.Close)
	pb.f.resolver.mu.Lock()
	pb.f.resolver.routes["bk_2"] = Route{BackendID: "bk_2", Addr: be2.Listener.Addr().String(), Secret: "other"}
	pb.f.resolver.mu.Unlock()
	return pb
}

// take returns and forgets what the backends have seen.
func (pb *pathBackends) take() map[string][]string {
	pb.mu.Lock()
	defer pb.mu.Unlock()
	seen := pb.seen
	pb.seen = map[string][]string{}
	return seen
}

// raw sends one request, written as is, on a connection of its own: the
// client's exact request line, which http.Client would not send. Method
// "UPGRADE" is a GET that asks for a WebSocket, which the backend
// declines, for the proxy's upgrade path.
func (pb *pathBackends) raw(t *testing.T, method, target, host string) (*http.Response, string) {
	t.Helper()
	c, br := pb.f.rawConn(t)
	switch method {
	case http.MethodPost:
		_, err := io.WriteString(c, "POST "+target+" HTTP/1.1\r\nHost: "+host+"\r\nConnection: close\r\nContent-Length: 4\r\n\r\nbody")
		if err != nil {
			t.Fatal(err)
		}
	case "UPGRADE":
		method = http.MethodGet
		_, err := io.WriteString(c, "GET "+target+" HTTP/1.1\r\nHost: "+host+"\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
			"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
		if err != nil {
			t.Fatal(err)
		}
	default:
		if _, err := io.WriteString(c, method+" "+target+" HTTP/1.1\r\nHost: "+host+"\r\nConnection: close\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
	}
	return readResponse(t, br, method)
}

// rawMethods are the ways through the proxy raw sends requests: the
// forwarder (GET), ReverseProxy (POST) and the upgrade tunnel.
var rawMethods = []string{http.MethodGet, http.MethodPost, "UPGRADE"}

// TestProxy_PathNormalization: dot-segments (percent-encoded too) and
// empty segments after the token are resolved before the path goes to the
// backend; a path that would climb above the token, or escapes inside the
// token, is refused and reaches no backend.
func TestProxy_PathNormalization(t *testing.T) {
	pb := newPathBackends(t)
	tok, tok2 := pb.f.token("bk_1"), pb.f.token("bk_2")
	normalized := []struct{ path, want string }{
		{"/a/./b", "/a/b"},
		{"/a/../b", "/b"},
		{"/a/%2e%2E/b", "/b"},
		{"/a/.%2e/b", "/b"},
		{"/a/%2E/b", "/a/b"},
		{"/a//b", "/a/b"},
		{"//a", "/a"},
		{"///", "/"},
		{"/a/..", "/"},
		{"/a/.", "/a/"},
		{"/a/b/..?x=/../y", "/a/?x=/../y"},
		{"/a/%2e%2e/caf%C3%A9/./%2Fx/", "/caf%C3%A9/%2Fx/"},
		{"/a/..b/.c/c..", "/a/..b/.c/c.."},
	}
	refused := []string{
		"/" + tok + "/../x",
		"/" + tok + "/..",
		"/" + tok + "/%2e%2e",
		"/" + tok + "/%2E%2e/x",
		"/" + tok + "/a/../../x",
		"/" + tok + "/a/%2e%2e/.%2E/x",
		"/" + tok + "/../" + tok2 + "/x",
		"/" + tok + "//../x",
		"/" + tok + "/..%2f" + tok2 + "/x",
		"/" + tok + "/a/%2F..%2F..%2Fx",
		"/" + tok + "%2f" + "x/y",
		"/" + tok + "%2Fy",
		"/" + tok[:4] + "%2F" + tok[4:] + "/x",
		"/%2e%2e/" + tok + "/x",
		"/../" + tok + "/x",
		"/./" + tok + "/x",
		"//" + tok + "/x",
	}
	for _, method := range rawMethods {
		for _, tt := range normalized {
			res, body := pb.raw(t, method, "/"+tok+tt.path, "x")
			seen := pb.take()
			if res.StatusCode != http.StatusOK || body != tt.want || len(seen["bk_2"]) > 0 {
				t.Errorf("%s /<token>%s = %d %q (bk_2 saw %q); want 200 %q from bk_1", method, tt.path, res.StatusCode, body, seen["bk_2"], tt.want)
			}
		}
		for _, target := range refused {
			res, body := pb.raw(t, method, target, "x")
			if res.StatusCode != http.StatusBadRequest && res.StatusCode != http.StatusUnauthorized {
				t.Errorf("%s %s = %d %q, want 400 or 401", method, strings.ReplaceAll(target, tok, "<token>"), res.StatusCode, body)
			}
			if seen := pb.take(); len(seen) > 0 {
				t.Errorf("%s %s reached a backend: %q", method, strings.ReplaceAll(target, tok, "<token>"), seen)
			}
		}
	}
}

// TestProxy_AbsoluteForm: a request line that names a host
// (GET http://evil.example/<token>/ HTTP/1.1) is refused; its host never
// reaches the backend.
func TestProxy_AbsoluteForm(t *testing.T) {
	pb := newPathBackends(t)
	tok := pb.f.token("bk_1")
	for _, method := range rawMethods {
		for _, target := range []string{
			"http://evil.example/" + tok + "/a",
			"http://evil.example:8080/" + tok + "/",
			"https://evil.example/" + tok + "/a?b=c",
			"HTTP://evil.example/" + tok + "/a",
		} {
			for _, host := range []string{"good.example", "evil.example"} {
				res, body := pb.raw(t, method, target, host)
				if res.StatusCode != http.StatusBadRequest {
					t.Errorf("%s %s (Host %s) = %d %q, want 400", method, strings.ReplaceAll(target, tok, "<token>"), host, res.StatusCode, body)
				}
				if seen := pb.take(); len(seen) > 0 {
					t.Errorf("%s %s (Host %s) reached a backend: %q", method, strings.ReplaceAll(target, tok, "<token>"), host, seen)
				}
			}
		}
	}
	// Origin form is unchanged: the client's Host goes on.
	res, body := pb.raw(t, http.MethodGet, "/"+tok+"/a", "good.example")
	if seen := pb.take(); res.StatusCode != http.StatusOK || len(seen["bk_1"]) != 1 || seen["bk_1"][0] != "GET /a good.example" {
		t.Errorf("GET /<token>/a = %d %q, bk_1 saw %q; want 200, \"GET /a good.example\"", res.StatusCode, body, seen["bk_1"])
	}
}

func TestCleanPath(t *testing.T) {
	tests := []struct {
		in, want string
		ok       bool
	}{
		{"/", "/", true},
		{"/a/b/", "/a/b/", true},
		{"/a/./b/../c", "/a/c", true},
		{"/a/%2E%2e/%2e/b/.%2E", "/", true},
		{"/a//b///c", "/a/b/c", true},
		{"//", "/", true},
		{"/a/.", "/a/", true},
		{"/a/%2e", "/a/", true},
		{"/a/...", "/a/...", true},
		{"/a/%2e%2e%2e", "/a/%2e%2e%2e", true},
		{"/a/.%2", "/a/.%2", true},
		{"/a%2Fb/c", "/a%2Fb/c", true},
		{"/..", "", false},
		{"/a/../..", "", false},
		{"/%2e%2e/a", "", false},
		{"/a/..%2f..%2fb", "", false},
		{"/a%2F..", "", false},
		{"/a%2f.%2fb", "", false},
	}
	for _, tt := range tests {
		got, ok := cleanPath(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("cleanPath(%q) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

// TestRequest_ParseHandsOverOddPaths: the fast path takes a plain path,
// and leaves to net/http every path the Proxy normalizes or refuses.
func TestRequest_ParseHandsOverOddPaths(t *testing.T) {
	for target, fast := range map[string]bool{
		"/tok/a/b.js":        true,
		"/tok/.well":         true,
		"/tok/a..b/c.":       true,
		"/tok/caf%C3%A9/%20": true,
		"/tok/a?b=/../c//d":  true,
		"/tok/a?b=%2f":       true,
		"/tok/a/./b":         false,
		"/tok/a/../b":        false,
		"/tok/a/%2e%2E/b":    false,
		"/tok/a/.":           false,
		"/tok//a":            false,
		"/tok/a/":            true,
		"/tok/a%2fb":         false,
		"/tok/a%2F..":        false,
		"/t%2fk/a":           false,
		"http://h/tok/a":     false,
	} {
		var r request
		if got := r.parse([]byte("GET " + target + " HTTP/1.1\r\nHost: x\r\n\r\n")); got != fast {
			t.Errorf("parse(GET %s) = %v, want %v", target, got, fast)
		}
	}
}

// FuzzCleanPath: a path cleanPath accepts comes out with no dot-segment,
// no empty segment and nothing left to clean.
func FuzzCleanPath(f *testing.F) {
	for _, s := range []string{"/a/./b/../c", "//a//", "/a/%2e%2E/b", "/a%2f..", "/.../x/..."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		if len(p) == 0 || p[0] != '/' {
			return
		}
		clean, ok := cleanPath(p)
		if !ok {
			return
		}
		if clean[0] != '/' || strings.Contains(clean, "//") {
			t.Fatalf("cleanPath(%q) = %q", p, clean)
		}
		for _, s := range strings.Split(clean[1:], "/") {
			if dots(s) > 0 {
				t.Fatalf("cleanPath(%q) = %q, which has the dot-segment %q", p, clean, s)
			}
		}
		if again, ok := cleanPath(clean); !ok || again != clean {
			t.Fatalf("cleanPath(%q) = %q, but cleanPath(%q) = %q, %v", p, clean, clean, again, ok)
		}
	})
}
