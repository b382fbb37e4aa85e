package proxy

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// peerFixtures returns two proxies with one signing key: far runs backend
// bk_1; near routes bk_1 to far's proxy as a Peer, as a Berth node does for
// a backend that another node runs.
func peerFixtures(t *testing.T, backend http.Handler) (near, far *fixture) {
	t.Helper()
	far = newFixture(t, backend)
	near = newFixture(t, http.NotFoundHandler())
	near.signer = far.signer
	near.proxy.cfg.Signer = far.signer
	near.resolver.mu.Lock()
	near.resolver.routes["bk_1"] = Route{BackendID: "bk_1", Addr: strings.TrimPrefix(far.server.URL, "http://"), Peer: true,
		Activity: near.activity}
	near.resolver.mu.Unlock()
	return near, far
}

// A request to a backend another node runs goes to that node's proxy with
// its token, on every path through the proxy: the backend gets it as if it
// had come to its own node's proxy, with that node's secret and activity.
func TestProxy_PeerRoute(t *testing.T) {
	near, far := peerFixtures(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s secret=%s user=%s xff=%d body=%s", r.Method, r.URL.RequestURI(),
			r.Header.Get(HeaderSecret), r.Header.Get(HeaderUser), len(r.Header.Values("X-Forwarded-For")), body)
	}))
	tok := near.token("bk_1")
	for _, tt := range []struct {
		method, path, body, want string
	}{
		{"GET", "/" + tok + "/a/b?q=1", "", "GET /a/b?q=1 secret=s3cret user=alice xff=1 body="},
		{"GET", "/" + tok + "/a%2Fb", "", "GET /a%2Fb secret=s3cret user=alice xff=1 body="},
		{"POST", "/" + tok + "/up", "payload", "POST /up secret=s3cret user=alice xff=1 body=payload"},
	} {
		res, body := near.do(t, tt.method, tt.path, http.Header{HeaderSecret: {"forged"}}, tt.body)
		if res.StatusCode != 200 || body != tt.want {
			t.Errorf("%s %s through the peer: %d %q, want 200 %q", tt.method, tt.path, res.StatusCode, body, tt.want)
		}
	}
	if got := far.activity.begins.Load(); got != 3 {
		t.Errorf("the backend's own node saw %d requests begin, want 3", got)
	}
}

func TestProxy_PeerRouteWebSocket(t *testing.T) {
	near, far := peerFixtures(t, http.HandlerFunc(wsEcho))
	c := near.dialWS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Write(ctx, websocket.MessageText, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if _, got, err := c.Read(ctx); err != nil || string(got) != "hello" {
		t.Fatalf("echo through the peer = %q, %v", got, err)
	}
	if b := far.activity.begins.Load(); b != 1 {
		t.Errorf("the backend's own node counts %d WebSockets, want 1", b)
	}
	c.Close(websocket.StatusNormalClosure, "")
	waitFor(t, "End on the backend's node after the WebSocket closed", func() bool { return far.activity.ends.Load() == 1 })
}
