package e2e

import (
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
)

// TestKeys: at most one live backend per key, one spawn for many concurrent
// connects, growing fencing tokens, and a key free only once terminated.
func TestKeys(t *testing.T) {
	t.Parallel()
	s := start(t, opts{})

	t.Run("200 concurrent connects spawn one backend", func(t *testing.T) {
		t.Parallel()
		const n = 200
		ctx := testCtx(t, 60*time.Second)
		// Our own transport: 200 simultaneous connections, none shared with
		// other tests.
		hc := &http.Client{Transport: checked(&http.Transport{MaxIdleConnsPerHost: n})}
		defer hc.CloseIdleConnections()
		client := api.NewClient(s.API, "", hc)
		resps := make([]*api.ConnectResponse, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		gate := make(chan struct{})
		for i := range n {
			wg.Go(func() {
				<-gate
				resps[i], errs[i] = client.Connect(ctx, api.ConnectRequest{
					Key: "crowd", Spawn: tb(nil), User: "u", Wait: true, WaitTimeoutSeconds: 30,
				})
			})
		}
		close(gate)
		wg.Wait()
		spawned, ids, tokens := 0, map[string]int{}, map[string]bool{}
		for i := range n {
			if errs[i] != nil {
				t.Fatalf("connect %d: %v", i, errs[i])
			}
			r := resps[i]
			if r.Spawned {
				spawned++
			}
			ids[r.BackendID]++
			if tokens[r.Token] {
				t.Errorf("connect %d got a token another caller also got", i)
			}
			tokens[r.Token] = true
			if r.State != berth.StateReady {
				t.Errorf("connect %d: state %q, want ready (wait: true)", i, r.State)
			}
		}
		if spawned != 1 {
			t.Errorf("%d responses say spawned: true, want exactly 1", spawned)
		}
		if len(ids) != 1 {
			t.Fatalf("callers got %d different backends %v, want 1", len(ids), ids)
		}
		list, err := client.Backends(ctx, "crowd", "")
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != 1 {
			t.Errorf("GET /v1/backends?key=crowd lists %d backends, want 1", len(list))
		}
		// Every caller's own token works.
		var mu sync.Mutex
		bad := 0
		for i := range n {
			wg.Go(func() {
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, resps[i].URL, nil)
				resp, err := hc.Do(req)
				ok := err == nil && resp.StatusCode == http.StatusOK
				if err == nil {
					resp.Body.Close()
				}
				if !ok {
					mu.Lock()
					bad++
					mu.Unlock()
					t.Errorf("GET with caller %d's URL: %v %v", i, err, resp)
				}
			})
		}
		wg.Wait()
		if bad > 0 {
			t.Errorf("%d of %d tokens did not work", bad, n)
		}
	})

	t.Run("same key while live: same backend, fresh token", func(t *testing.T) {
		t.Parallel()
		resp, body := s.do(t, http.MethodPost, "/v1/connect", connectJSON(t, api.ConnectRequest{Key: "twice", Spawn: tb(nil), Wait: true}))
		if resp.StatusCode != http.StatusCreated {
			t.Errorf("first connect: status %d, want 201 Created", resp.StatusCode)
		}
		first := decode[api.ConnectResponse](t, body)
		// Without a spawn config: the key is held, so this finds it.
		resp, body = s.do(t, http.MethodPost, "/v1/connect", `{"key":"twice"}`)
		if resp.StatusCode != http.StatusOK {
			t.Errorf("second connect: status %d %s, want 200", resp.StatusCode, body)
		}
		second := decode[api.ConnectResponse](t, body)
		if second.Spawned || second.BackendID != first.BackendID {
			t.Errorf("second connect: spawned %v backend %s, want false and %s", second.Spawned, second.BackendID, first.BackendID)
		}
		if second.Token == first.Token || second.URL == first.URL {
			t.Error("second connect returned the same token; every connect must get a fresh one")
		}
		if second.FencingToken != first.FencingToken {
			t.Errorf("fencing token changed within one holder: %d then %d", first.FencingToken, second.FencingToken)
		}
	})

	t.Run("keyless connects always spawn", func(t *testing.T) {
		t.Parallel()
		a := s.connect(t, api.ConnectRequest{Spawn: tb(nil)})
		b := s.connect(t, api.ConnectRequest{Spawn: tb(nil)})
		if !a.Spawned || !b.Spawned || a.BackendID == b.BackendID {
			t.Errorf("two keyless connects: %s (spawned %v), %s (spawned %v); want two new backends", a.BackendID, a.Spawned, b.BackendID, b.Spawned)
		}
		s.terminate(t, a.BackendID, true)
		s.terminate(t, b.BackendID, true)
	})

	t.Run("fencing tokens grow across holders", func(t *testing.T) {
		t.Parallel()
		var last int64
		seen := map[string]bool{}
		for i := range 4 {
			c := s.spawnReady(t, "fenced", tb(nil))
			if !c.Spawned || seen[c.BackendID] {
				t.Fatalf("holder %d: spawned %v backend %s; want a new backend", i, c.Spawned, c.BackendID)
			}
			seen[c.BackendID] = true
			if c.FencingToken <= last {
				t.Errorf("holder %d: fencing token %d, want > %d", i, c.FencingToken, last)
			}
			last = c.FencingToken
			// The backend itself sees the same number.
			if env := tbEnv(t, c.URL); env["BERTH_FENCING_TOKEN"] != itoa(c.FencingToken) {
				t.Errorf("holder %d: BERTH_FENCING_TOKEN=%q, want %d", i, env["BERTH_FENCING_TOKEN"], c.FencingToken)
			}
			s.terminate(t, c.BackendID, i%2 == 0)
			s.waitTerminated(t, c.BackendID, 10*time.Second)
		}
		// The list shows every holder, newest first; live=true none of them.
		_, body := s.do(t, http.MethodGet, "/v1/backends?key=fenced", "")
		all := decode[api.BackendList](t, body).Backends
		if len(all) != 4 || all[0].FencingToken != last {
			t.Errorf("GET /v1/backends?key=fenced: %d backends, first fenced at %v; want 4, newest (%d) first", len(all), fencing(all), last)
		}
		_, body = s.do(t, http.MethodGet, "/v1/backends?key=fenced&live=true", "")
		if live := decode[api.BackendList](t, body).Backends; len(live) != 0 {
			t.Errorf("GET /v1/backends?key=fenced&live=true: %d backends, want none (all terminated)", len(live))
		}
	})

	t.Run("key free only after terminated", func(t *testing.T) {
		t.Parallel()
		// The old holder takes a while to stop; a connect meanwhile must not
		// start the next holder before the old one is terminated.
		old := s.spawnReady(t, "handover", tb(map[string]string{"TB_TERM_DELAY_MS": "700"}))
		s.terminate(t, old.BackendID, false)
		s.waitState(t, old.BackendID, berth.StateTerminating, 5*time.Second)
		next := s.connect(t, api.ConnectRequest{Key: "handover", Spawn: tb(nil), Wait: true})
		if next.BackendID == old.BackendID || !next.Spawned {
			t.Fatalf("connect during terminating: backend %s spawned %v; want a new backend once the old one is gone", next.BackendID, next.Spawned)
		}
		ob := s.backend(t, old.BackendID)
		nb := s.backend(t, next.BackendID)
		if ob.State != berth.StateTerminated || ob.TerminatedAt == nil {
			t.Fatalf("old holder is %q when the new one exists; want terminated", ob.State)
		}
		if nb.CreatedAt.Before(*ob.TerminatedAt) {
			t.Errorf("new holder created at %v, before the old one terminated at %v", nb.CreatedAt, *ob.TerminatedAt)
		}
		if ob.Reason != berth.ReasonRequested || ob.ExitCode == nil || *ob.ExitCode != 0 {
			t.Errorf("old holder: reason %q exit %v, want requested, exit 0 (it stops cleanly within grace)", ob.Reason, ob.ExitCode)
		}
	})
}

func fencing(bs []*berth.Backend) []int64 {
	var out []int64
	for _, b := range bs {
		out = append(out, b.FencingToken)
	}
	return out
}
