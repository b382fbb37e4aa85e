package freeze

import (
	"net/http"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
)

// A frozen backend uses no CPU; the next request thaws it before it is
// forwarded, with its memory as it was; the idle timer starts again after
// a thaw, and a connect thaws it too.
func TestFreeze_ThawOnRequest(t *testing.T) {
	forEach(t, func(t *testing.T, v variant) {
		s := start(t, v)
		c := &http.Client{Timeout: 30 * time.Second}
		// 2 s idle: the checks after a thaw must be done before it
		// freezes again.
		resp := s.connect(t, "doc-thaw", s.spawn(2, 120, map[string]string{"TB_SPIN": "1"}))
		id := resp.BackendID
		for want := 1; want <= 2; want++ {
			if got := get(t, c, resp.URL+"count"); got != strconv.Itoa(want) {
				t.Fatalf("/count = %s, want %d", got, want)
			}
		}
		if used := cpuOver(t, id, 500*time.Millisecond); used <= 0 {
			t.Fatalf("the running backend (TB_SPIN) used %d ticks of CPU over 500ms, want some", used)
		}

		s.waitFrozen(t, id, 15*time.Second)
		s.awaitEvent(t, id, "frozen", 10*time.Second)
		if used := cpuOver(t, id, time.Second); used != 0 {
			t.Errorf("the frozen backend used %d ticks of CPU over 1s, want 0", used)
		}
		list, err := s.Client.LiveBackends(ctxFor(t, 10*time.Second), "doc-thaw")
		if err != nil || len(list) != 1 || list[0].FrozenAt == nil {
			t.Errorf("GET /v1/backends?key=doc-thaw&live=true = %+v (%v), want the backend with frozen_at", list, err)
		}
		ps, err := exec.Command(bin.Berth, "ps", "--api", s.API).CombinedOutput()
		if err != nil || !regexp.MustCompile(id+`\s+doc-thaw\s+frozen\s`).Match(ps) {
			t.Errorf("berth ps (%v) does not list %s as frozen:\n%s", err, id, ps)
		}
		if n := s.metric(t, "berth_backends_frozen"); n != 1 {
			t.Errorf("berth_backends_frozen = %v, want 1", n)
		}
		if mem := s.metric(t, "berth_frozen_memory_bytes"); mem < 1<<20 {
			t.Errorf("berth_frozen_memory_bytes = %v, want at least 1 MiB", mem)
		}

		// The request thaws it and is answered from the memory it kept.
		if got := get(t, c, resp.URL+"count"); got != "3" {
			t.Errorf("/count after the freeze = %s, want 3 (memory kept)", got)
		}
		if b := s.backend(t, id); b.FrozenAt != nil || b.State != berth.StateReady {
			t.Errorf("after a request the backend is %s, frozen_at %v; want ready, not frozen", b.State, b.FrozenAt)
		}
		s.awaitEvent(t, id, "thawed", 10*time.Second)
		if n := s.metric(t, "berth_backends_frozen"); n != 0 {
			t.Errorf("berth_backends_frozen after the thaw = %v, want 0", n)
		}
		if used := cpuOver(t, id, 500*time.Millisecond); used <= 0 {
			t.Errorf("the thawed backend used %d ticks of CPU over 500ms, want some", used)
		}

		// Idle again: frozen again; a connect for the key thaws it.
		s.waitFrozen(t, id, 15*time.Second)
		again, err := s.Client.Connect(ctxFor(t, 30*time.Second), api.ConnectRequest{Key: "doc-thaw"})
		if err != nil {
			t.Fatalf("connect to the frozen key: %v", err)
		}
		if again.BackendID != id || again.Spawned {
			t.Errorf("connect to the frozen key gave backend %s (spawned %v), want %s", again.BackendID, again.Spawned, id)
		}
		if b := s.backend(t, id); b.FrozenAt != nil {
			t.Errorf("after a connect the backend is still frozen (since %v)", b.FrozenAt)
		}
		if used := cpuOver(t, id, 300*time.Millisecond); used <= 0 {
			t.Errorf("the backend a connect thawed used %d ticks of CPU over 300ms, want some", used)
		}
		if got := get(t, c, again.URL+"count"); got != "4" {
			t.Errorf("/count after the connect = %s, want 4", got)
		}
	})
}

// After max_frozen_seconds a frozen backend is thawed and stopped as an
// idle one is: it handles its stop signal, and its final save is what
// the key's next backend starts from.
func TestFreeze_MaxFrozenStopsWithFinalSave(t *testing.T) {
	forEach(t, func(t *testing.T, v variant) {
		s := start(t, v)
		c := &http.Client{Timeout: 30 * time.Second}
		sc := s.spawn(1, 2, map[string]string{"TB_SAVE_COUNT": "1"})
		sc.State.Mode = berth.StateModeDir
		resp := s.connect(t, "doc-save", sc)
		for range 3 {
			get(t, c, resp.URL+"count")
		}
		s.waitFrozen(t, resp.BackendID, 15*time.Second)
		b := s.waitTerminated(t, resp.BackendID, 30*time.Second)
		if b.Reason != berth.ReasonIdle {
			t.Errorf("reason %q, want idle", b.Reason)
		}
		ev := s.awaitEvent(t, resp.BackendID, "frozen for max_frozen_seconds", 10*time.Second)
		if ev.State != berth.StateTerminating && ev.State != berth.StateTerminated {
			t.Errorf("the max_frozen_seconds event is in state %s, want terminating", ev.State)
		}
		var out strings.Builder
		if err := s.Client.Logs(ctxFor(t, 10*time.Second), resp.BackendID, false, &out); err != nil {
			t.Fatalf("logs: %v", err)
		}
		if !strings.Contains(out.String(), "got SIGTERM") {
			t.Errorf("the backend never logged its SIGTERM (thawed before the stop?); its output:\n%s", out.String())
		}

		next := s.connect(t, "doc-save", sc)
		if next.BackendID == resp.BackendID {
			t.Fatalf("the key's next connect gave the terminated backend")
		}
		if got := get(t, c, next.URL+"count"); got != "4" {
			t.Errorf("/count of the key's next backend = %s, want 4: the final save (3) restored", got)
		}
	})
}

// Spawns that ask for freeze wrongly are refused with the field named.
func TestFreeze_BadInput(t *testing.T) {
	s := start(t, variants[0])
	for _, tc := range []struct {
		body, field string
	}{
		{`{"key":"k","spawn":{"command":["x"],"idle_action":"sleep"}}`, "spawn.idle_action"},
		{`{"key":"k","spawn":{"command":["x"],"idle_action":"freeze","max_frozen_seconds":-1}}`, "spawn.max_frozen_seconds"},
		{`{"key":"k","spawn":{"command":["x"],"idle_action":"freeze","max_frozen_seconds":604801}}`, "spawn.max_frozen_seconds"},
	} {
		resp, err := http.Post(s.API+"/v1/connect", "application/json", strings.NewReader(tc.body))
		if err != nil {
			t.Fatal(err)
		}
		var eb api.ErrorBody
		body := readAll(t, resp)
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: %d %s, want 400", tc.body, resp.StatusCode, body)
			continue
		}
		eb = decodeJSON[api.ErrorBody](t, body)
		if eb.Error.Field != tc.field {
			t.Errorf("%s: field %q, want %q (%s)", tc.body, eb.Error.Field, tc.field, eb.Error.Message)
		}
	}
}

// A Berth killed while a backend is frozen leaves it frozen; the Berth
// started after it re-adopts the backend and thaws it, memory intact.
func TestFreeze_RestartThawsReadopted(t *testing.T) {
	forEach(t, func(t *testing.T, v variant) {
		s := start(t, v)
		c := &http.Client{Timeout: 30 * time.Second}
		resp := s.connect(t, "doc-restart", s.spawn(1, 120, map[string]string{"TB_SPIN": "1"}))
		get(t, c, resp.URL+"count")
		s.waitFrozen(t, resp.BackendID, 15*time.Second)
		s.kill()
		if used := cpuOver(t, resp.BackendID, 500*time.Millisecond); used != 0 {
			t.Errorf("the frozen backend used %d ticks of CPU while Berth was down, want 0", used)
		}

		s.restart()
		if used := cpuOver(t, resp.BackendID, 500*time.Millisecond); used <= 0 {
			t.Errorf("the re-adopted backend used %d ticks of CPU over 500ms: still frozen", used)
		}
		again, err := s.Client.Connect(ctxFor(t, 30*time.Second), api.ConnectRequest{Key: "doc-restart"})
		if err != nil {
			t.Fatalf("connect after the restart: %v", err)
		}
		if again.BackendID != resp.BackendID {
			t.Fatalf("after the restart the key has backend %s, want the re-adopted %s", again.BackendID, resp.BackendID)
		}
		if got := get(t, c, again.URL+"count"); got != "2" {
			t.Errorf("/count after the restart = %s, want 2 (memory kept)", got)
		}
	})
}

// Berth shutting down stops a frozen backend as any other: thawed, its
// stop signal handled, its final save made, which the key's next backend
// (under the next Berth) starts from.
func TestFreeze_ShutdownSavesFrozen(t *testing.T) {
	forEach(t, func(t *testing.T, v variant) {
		s := start(t, v)
		c := &http.Client{Timeout: 30 * time.Second}
		sc := s.spawn(1, 3600, map[string]string{"TB_SAVE_COUNT": "1"})
		sc.State.Mode = berth.StateModeDir
		resp := s.connect(t, "doc-shutdown", sc)
		get(t, c, resp.URL+"count")
		get(t, c, resp.URL+"count")
		s.waitFrozen(t, resp.BackendID, 15*time.Second)
		s.interrupt()
		if pids := backendPIDs(resp.BackendID); len(pids) > 0 {
			t.Fatalf("processes %v of the frozen backend outlived Berth's shutdown", pids)
		}

		s.restart()
		next := s.connect(t, "doc-shutdown", sc)
		if got := get(t, c, next.URL+"count"); got != "3" {
			t.Errorf("/count of the key's next backend = %s, want 3: the frozen one's final save (2) restored", got)
		}
	})
}
