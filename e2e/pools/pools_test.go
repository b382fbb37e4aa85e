package pools

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
)

// coldStart is the test backend's time to listen in these tests: a real
// backend's heavy start (a language server, a JVM), which a pool hides.
const coldStart = 1500 * time.Millisecond

// A pool of 3 and 20 connects for new keys at once: 3 are claimed (each
// answered before any cold start could finish), 17 spawn cold, no backend
// ever serves two keys, each claimed backend knows its key, and the pool
// is back to 3 ready.
func TestPool_TwentyConnects(t *testing.T) {
	s := startServer(t)
	tmpl := s.template(coldStart)
	s.putPool("web", tmpl, 3, 0)

	type result struct {
		resp *api.ConnectResponse
		took time.Duration
	}
	results := make([]result, 20)
	var wg sync.WaitGroup
	for i := range results {
		wg.Go(func() {
			start := time.Now()
			resp, err := s.Client.Connect(t.Context(), api.ConnectRequest{Key: fmt.Sprintf("doc-%d", i), Pool: "web", Wait: true})
			if err != nil {
				t.Errorf("connect doc-%d: %v", i, err)
				return
			}
			results[i] = result{resp, time.Since(start)}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	var claimed, cold []result
	ids := map[string]string{}
	for i, r := range results {
		if prev, ok := ids[r.resp.BackendID]; ok {
			t.Errorf("backend %s serves %s and doc-%d", r.resp.BackendID, prev, i)
		}
		ids[r.resp.BackendID] = r.resp.Key
		if !r.resp.Spawned || r.resp.State != berth.StateReady {
			t.Errorf("doc-%d: spawned %v state %s; want a new, ready backend", i, r.resp.Spawned, r.resp.State)
		}
		if r.resp.Pool == "web" {
			claimed = append(claimed, r)
		} else {
			cold = append(cold, r)
		}
	}
	if len(claimed) != 3 || len(cold) != 17 {
		t.Fatalf("%d claimed, %d cold; want 3 and 17", len(claimed), len(cold))
	}
	slowestClaim := slices.MaxFunc(claimed, func(a, b result) int { return int(a.took - b.took) }).took
	fastestCold := slices.MinFunc(cold, func(a, b result) int { return int(a.took - b.took) }).took
	if slowestClaim >= fastestCold || slowestClaim >= coldStart {
		t.Errorf("slowest claimed connect took %s, fastest cold one %s (cold start %s): a claim must not wait for a start", slowestClaim, fastestCold, coldStart)
	}
	// Each backend knows the key it serves: claimed ones from their claim.
	for _, r := range results {
		var id identity
		get(t, r.resp.URL+"identity", &id)
		if id.Key != r.resp.Key || id.BackendID != r.resp.BackendID || id.FencingToken != r.resp.FencingToken {
			t.Errorf("backend %s says key %q fence %d; the connect said %q, %d", id.BackendID, id.Key, id.FencingToken, r.resp.Key, r.resp.FencingToken)
		}
		if id.Claimed != (r.resp.Pool == "web") {
			t.Errorf("backend %s: claimed %v; pool %q", id.BackendID, id.Claimed, r.resp.Pool)
		}
	}
	// The backends' own record: one claim each, never a second.
	perBackend := map[string][]string{}
	for _, line := range s.audit("claimed") {
		f := strings.Fields(line)
		perBackend[f[3]] = append(perBackend[f[3]], f[2])
	}
	if len(perBackend) != 3 {
		t.Errorf("%d backends were claimed by their own account; want 3: %v", len(perBackend), perBackend)
	}
	for b, keys := range perBackend {
		if len(keys) != 1 {
			t.Errorf("%s claimed for %v; want one key", b, keys)
		}
	}
	p := s.waitReady("web", 3)
	if p.Claimed != 3 {
		t.Errorf("pool claimed = %d; want 3", p.Claimed)
	}
	for name, want := range map[string]string{
		`berth_pool_claims_total{pool="web"}`:              "3",
		`berth_pool_cold_fallbacks_total{pool="web"}`:      "17",
		`berth_pool_backends{pool="web",status="ready"}`:   "3",
		`berth_pool_backends{pool="web",status="claimed"}`: "3",
	} {
		if got := s.metric(name); got != want {
			t.Errorf("%s = %q; want %s", name, got, want)
		}
	}
}

// A claimed backend loads what key K's last backend saved (through the
// fenced backend API, with the secret its claim brought); before its claim
// it could read no state, and its own saves land under K.
func TestPool_ClaimLoadsState(t *testing.T) {
	s := startServer(t)
	tmpl := s.template(0)
	tmpl.State.Mode = berth.StateModeBlob
	ctx := t.Context()

	// K's first backend, cold (the pool does not exist yet), saves v1.
	first := connect(t, s, api.ConnectRequest{Key: "notes", Spawn: &tmpl, Wait: true})
	put(t, first.URL+"state", "v1 by the cold backend")
	if err := s.Client.Terminate(ctx, first.BackendID, false); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the first backend to terminate", func() bool {
		b, err := s.Client.Backend(ctx, first.BackendID)
		return err == nil && b.State == berth.StateTerminated
	})

	s.putPool("notes", tmpl, 1, 0)
	second := connect(t, s, api.ConnectRequest{Key: "notes", Spawn: &tmpl, Wait: true}) // the template: claims too
	if second.Pool != "notes" {
		t.Fatalf("connect with the pool's template: pool %q; want a claim from notes", second.Pool)
	}
	if second.FencingToken <= first.FencingToken {
		t.Errorf("claimed backend's fence %d; want above the last holder's %d", second.FencingToken, first.FencingToken)
	}
	var id identity
	get(t, second.URL+"identity", &id)
	if id.LoadedState == nil || *id.LoadedState != "v1 by the cold backend" {
		t.Errorf("claimed backend loaded %v; want the last holder's state", id.LoadedState)
	}
	if id.PreclaimState != http.StatusUnauthorized {
		t.Errorf("state request before the claim answered %d; want 401 (refused)", id.PreclaimState)
	}
	put(t, second.URL+"state", "v2 by the claimed backend")
	var buf strings.Builder
	if err := s.Client.StateData(ctx, "notes", "", &buf); err != nil {
		t.Fatal(err)
	}
	if buf.String() != "v2 by the claimed backend" {
		t.Errorf("key's state = %q; want the claimed backend's save", buf.String())
	}
}

// A backend that fails its claim is stopped and the connect is served by
// a cold spawn; the pool replaces it.
func TestPool_ClaimFails(t *testing.T) {
	s := startServer(t)
	tmpl := s.template(0, "TB_CLAIM_FAIL", "1")
	s.putPool("bad", tmpl, 1, 0)
	failing := s.pooled("bad")
	resp := connect(t, s, api.ConnectRequest{Key: "k", Pool: "bad", Wait: true})
	if resp.Pool != "" || failing[resp.BackendID] {
		t.Fatalf("connect was served by %s (pool %q); want a cold spawn", resp.BackendID, resp.Pool)
	}
	var id identity
	get(t, resp.URL+"identity", &id)
	if id.Key != "k" {
		t.Errorf("cold backend serves %q; want k", id.Key)
	}
	for bid := range failing {
		eventually(t, 30*time.Second, "the failed backend to terminate", func() bool {
			b, err := s.Client.Backend(t.Context(), bid)
			return err == nil && b.State == berth.StateTerminated
		})
		var evs []string
		s.Client.Events(t.Context(), bid, func(e api.StateEvent) error {
			evs = append(evs, e.Message)
			if e.State == berth.StateTerminated {
				return io.EOF
			}
			return nil
		})
		if !slices.ContainsFunc(evs, func(m string) bool { return strings.Contains(m, "claim failed") }) {
			t.Errorf("failed backend's history %q says nothing of its claim", evs)
		}
	}
	if got := s.metric(`berth_pool_claim_failures_total{pool="bad"}`); got != "1" {
		t.Errorf("claim failures = %q; want 1", got)
	}
	s.waitReady("bad", 1)
}

// A pooled backend that is killed is replaced.
func TestPool_KilledReplaced(t *testing.T) {
	s := startServer(t)
	s.putPool("web", s.template(0), 2, 0)
	before := s.pooled("web")
	var victim string
	for id := range before {
		victim = id
		break
	}
	pids := backendPIDs(victim)
	if len(pids) == 0 {
		t.Fatalf("no process of %s", victim)
	}
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	eventually(t, 30*time.Second, "the killed backend to be recorded ended", func() bool {
		b, err := s.Client.Backend(t.Context(), victim)
		return err == nil && b.State == berth.StateTerminated
	})
	s.waitReady("web", 2)
	after := s.pooled("web")
	if after[victim] || len(after) != 2 {
		t.Errorf("pool after the kill: %v; want two ready, without %s", after, victim)
	}
}

// A Berth killed and restarted re-adopts its pool's backends (the same
// processes, not replacements), keeps a claimed one serving its key, and
// claims a re-adopted one for a new key.
func TestPool_RestartReadopts(t *testing.T) {
	s := startServer(t)
	s.putPool("web", s.template(0), 2, 0)
	held := connect(t, s, api.ConnectRequest{Key: "held", Pool: "web", Wait: true})
	if held.Pool != "web" {
		t.Fatalf("first connect not claimed: %+v", held)
	}
	s.waitReady("web", 2)
	before := s.pooled("web")
	pids := map[string][]int{}
	for id := range before {
		pids[id] = backendPIDs(id)
	}

	s.kill()
	s.restart()

	p := s.waitReady("web", 2)
	if p.Claimed != 1 {
		t.Errorf("claimed after restart = %d; want 1 (held's backend)", p.Claimed)
	}
	after := s.pooled("web")
	for id := range before {
		if !after[id] {
			t.Errorf("pooled backend %s was not re-adopted (ready now: %v)", id, after)
		} else if got := backendPIDs(id); !slices.Equal(got, pids[id]) {
			t.Errorf("%s runs as %v after the restart; was %v", id, got, pids[id])
		}
	}
	again := connect(t, s, api.ConnectRequest{Key: "held", Pool: "web", Wait: true})
	if again.BackendID != held.BackendID || again.Spawned {
		t.Errorf("held after restart: %s (spawned %v); want %s again", again.BackendID, again.Spawned, held.BackendID)
	}
	var hid identity
	get(t, again.URL+"identity", &hid)
	if hid.Key != "held" || !hid.Claimed {
		t.Errorf("held's backend after restart says %+v; want claimed for held", hid)
	}
	fresh := connect(t, s, api.ConnectRequest{Key: "fresh", Pool: "web", Wait: true})
	if !before[fresh.BackendID] {
		t.Errorf("new key got %s; want one of the re-adopted %v", fresh.BackendID, before)
	}
	var id identity
	get(t, fresh.URL+"identity", &id)
	if id.Key != "fresh" || !id.Claimed {
		t.Errorf("re-adopted backend says %+v; want claimed for fresh", id)
	}
}

// Pools defined in the --pools file are kept, through a restart, with
// the ones the API added; bad input is a 4xx naming the field.
func TestPool_FileAPIAndBadInput(t *testing.T) {
	dir := t.TempDir()
	file := dir + "/pools.json"
	writeFile(t, file, fmt.Sprintf(`{"pools": [{"name": "fromfile", "spawn": {"command": [%q]}, "min_ready": 1}]}`, bin.TestBackend))
	s := startServer(t, "--pools", file)
	s.waitReady("fromfile", 1)
	s.putPool("fromapi", s.template(0), 1, 3)
	ctx := t.Context()
	ps, err := s.Client.Pools(ctx)
	if err != nil || len(ps) != 2 || ps[0].Name != "fromapi" || ps[1].Name != "fromfile" || ps[0].Max != 3 {
		t.Fatalf("pools = %+v, %v; want fromapi (max 3) and fromfile", ps, err)
	}
	s.kill()
	s.restart()
	if p, err := s.Client.Pool(ctx, "fromapi"); err != nil || p.MinReady != 1 || p.Max != 3 {
		t.Errorf("fromapi after restart = %+v, %v", p, err)
	}

	tmpl := s.template(0)
	for _, tt := range []struct {
		name  string
		do    func() error
		field string
	}{
		{"min_ready", func() error {
			_, err := s.Client.PutPool(ctx, "x", api.PoolRequest{Spawn: &tmpl, MinReady: -1})
			return err
		}, "min_ready"},
		{"max", func() error {
			_, err := s.Client.PutPool(ctx, "x", api.PoolRequest{Spawn: &tmpl, MinReady: 3, Max: 2})
			return err
		}, "max"},
		{"spawn", func() error {
			_, err := s.Client.PutPool(ctx, "x", api.PoolRequest{MinReady: 1})
			return err
		}, "spawn"},
		{"dir mode", func() error {
			d := tmpl
			d.State.Mode = berth.StateModeDir
			_, err := s.Client.PutPool(ctx, "x", api.PoolRequest{Spawn: &d, MinReady: 1})
			return err
		}, "spawn.state.mode"},
		{"name", func() error {
			_, err := s.Client.PutPool(ctx, "Bad!", api.PoolRequest{Spawn: &tmpl, MinReady: 1})
			return err
		}, "name"},
		{"unknown pool", func() error {
			_, err := s.Client.Connect(ctx, api.ConnectRequest{Key: "k", Pool: "nope"})
			return err
		}, "pool"},
		{"no key", func() error {
			_, err := s.Client.Connect(ctx, api.ConnectRequest{Pool: "fromapi"})
			return err
		}, "key"},
		{"other spawn", func() error {
			other := s.template(0, "X", "1")
			_, err := s.Client.Connect(ctx, api.ConnectRequest{Key: "k", Pool: "fromapi", Spawn: &other})
			return err
		}, "spawn"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.do()
			ae, ok := err.(*api.Error)
			if !ok || ae.Status != http.StatusBadRequest || ae.Field != tt.field {
				t.Errorf("err = %#v; want a 400 naming %s", err, tt.field)
			}
		})
	}
	if _, err := s.Client.Pool(ctx, "nope"); !isStatus(err, http.StatusNotFound) {
		t.Errorf("GET unknown pool: %v; want 404", err)
	}
	if err := s.Client.DeletePool(ctx, "fromapi"); err != nil {
		t.Fatal(err)
	}
	if err := s.Client.DeletePool(ctx, "fromapi"); !isStatus(err, http.StatusNotFound) {
		t.Errorf("DELETE twice: %v; want 404", err)
	}
	eventually(t, 30*time.Second, "the deleted pool's backends to stop", func() bool {
		return len(s.pooled("fromapi")) == 0
	})
}

func writeFile(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

func isStatus(err error, status int) bool {
	ae, ok := err.(*api.Error)
	return ok && ae.Status == status
}

// Many connects for one new key at once: one claim, one backend, which
// every connect is given; the other ready backends stay unclaimed.
func TestPool_SameKeyConcurrent(t *testing.T) {
	s := startServer(t)
	s.putPool("web", s.template(0), 3, 0)
	before := s.pooled("web")
	resps := make([]*api.ConnectResponse, 10)
	var wg sync.WaitGroup
	for i := range resps {
		wg.Go(func() {
			r, err := s.Client.Connect(t.Context(), api.ConnectRequest{Key: "shared", Pool: "web", Wait: true})
			if err != nil {
				t.Errorf("connect %d: %v", i, err)
				return
			}
			resps[i] = r
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	spawned := 0
	for _, r := range resps {
		if r.BackendID != resps[0].BackendID {
			t.Errorf("connects got %s and %s for one key", resps[0].BackendID, r.BackendID)
		}
		if r.Spawned {
			spawned++
		}
	}
	if spawned != 1 || !before[resps[0].BackendID] {
		t.Errorf("%d connects say spawned, backend %s (pooled: %v); want one claim of a pooled backend", spawned, resps[0].BackendID, before)
	}
	if got := s.metric(`berth_pool_claims_total{pool="web"}`); got != "1" {
		t.Errorf("claims = %q; want 1", got)
	}
	if n := len(s.audit("claimed")); n != 1 {
		t.Errorf("%d backends say they were claimed; want 1", n)
	}
}
