package replicas

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berthhq/berth/api"
)

// Connects for one key that arrive at different replicas at once spawn one
// backend: every caller gets the same backend_id, and the backends' own
// locks never see two holders of a key.
func TestReplicas_OneBackendPerKey(t *testing.T) {
	c := newCluster(t, 3)
	const keys, connects = 10, 1000
	spawn := c.spawn()
	ids := make([]map[string]int, keys)
	for i := range ids {
		ids[i] = map[string]int{}
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, connects)
	ctx := testCtx(t, 2*time.Minute)
	// All at once: each caller has its own connection (the transport
	// keeps only a few idle ones per replica) and waits for the others.
	start := make(chan struct{})
	for i := range connects {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			k := i % keys
			nd := c.nodes[(i/keys)%len(c.nodes)]
			res, err := nd.Client.Connect(ctx, api.ConnectRequest{Key: fmt.Sprintf("doc-%d", k), Spawn: spawn, User: "u"})
			if err != nil {
				errs <- fmt.Errorf("connect %d via %s: %w", i, nd.id, err)
				return
			}
			mu.Lock()
			ids[k][res.BackendID]++
			mu.Unlock()
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for k, m := range ids {
		if len(m) != 1 {
			t.Errorf("key doc-%d: callers got %d backends %v, want one", k, len(m), m)
		}
		for id := range m {
			seen[id] = true
		}
	}
	all, err := c.nodes[0].Client.Backends(ctx, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != keys || len(seen) != keys {
		t.Errorf("%d backends recorded, %d handed out; want exactly %d spawns", len(all), len(seen), keys)
	}
	onNode := map[string]int{}
	for _, b := range all {
		onNode[b.Node]++
		if b.FencingToken != 1 {
			t.Errorf("backend %s of key %s has fencing token %d, want 1 (the key's first)", b.ID, b.Key, b.FencingToken)
		}
	}
	t.Logf("backends by node: %v", onNode)
	// Wait for them to be ready, so a double start would have had time
	// to take its lock.
	for _, b := range all {
		if _, err := c.nodes[0].Client.Connect(ctx, api.ConnectRequest{Key: b.Key, Wait: true}); err != nil {
			t.Fatal(err)
		}
	}
	c.checkNoViolations()
	// The backends' own word: ten started, one per key, each with the
	// key's first fencing token.
	starts := c.checkAudit()
	if len(starts) != keys {
		t.Errorf("the backends recorded starts for %d keys, want %d", len(starts), keys)
	}
	for k, ss := range starts {
		if len(ss) != 1 || ss[0].fence != 1 {
			t.Errorf("key %s: the backends recorded %d starts %+v, want one, with fencing token 1", k, len(ss), ss)
		}
	}
}

// A token minted by one replica serves HTTP and WebSocket through the proxy
// of a second replica, for a backend a third runs.
func TestReplicas_AnyProxyAnyBackend(t *testing.T) {
	c := newCluster(t, 3)
	a, b, far := c.nodes[0], c.nodes[1], c.nodes[2]
	ctx := testCtx(t, time.Minute)
	first, err := far.Client.Connect(ctx, api.ConnectRequest{Key: "doc", Spawn: c.spawn(), Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	res, err := a.Client.Connect(ctx, api.ConnectRequest{Key: "doc", Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.BackendID != first.BackendID || res.State != "ready" || res.Spawned {
		t.Fatalf("connect via %s: backend %s (%s, spawned %v); want %s, ready, not spawned", a.id, res.BackendID, res.State, res.Spawned, first.BackendID)
	}
	rec, err := a.Client.Backend(ctx, res.BackendID)
	if err != nil || rec.Node != far.id {
		t.Fatalf("backend %s runs on %q (%v), want %s", res.BackendID, rec.Node, err, far.id)
	}
	// A's URL, on B's proxy.
	viaB := b.Proxy + strings.TrimPrefix(res.URL, a.Proxy)
	if !strings.HasPrefix(res.URL, a.Proxy) {
		viaB = b.Proxy + "/" + res.Token + "/"
	}
	resp, err := http.Get(viaB + "echo/x?y=1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"url":"/echo/x?y=1"`) || !strings.Contains(string(body), res.BackendID) {
		t.Fatalf("GET through %s's proxy: %d %s", b.id, resp.StatusCode, body)
	}
	testWebSocketAcross(t, c, a, b, far)
}
