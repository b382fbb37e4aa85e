package pools

import (
	"fmt"
	"testing"
	"time"

	"github.com/berthhq/berth/api"
)

// max caps a pool's live backends, claimed or not: past it the pool does
// not refill and connects spawn cold.
func TestPool_MaxCaps(t *testing.T) {
	s := startServer(t)
	s.putPool("web", s.template(0), 2, 3)
	for i := range 3 {
		r := connect(t, s, api.ConnectRequest{Key: fmt.Sprintf("k%d", i), Pool: "web", Wait: true})
		if r.Pool != "web" {
			t.Fatalf("connect k%d was not claimed (pool %q)", i, r.Pool)
		}
		time.Sleep(300 * time.Millisecond) // the refill, where max allows one
	}
	// 3 claimed: the pool may start nothing more.
	time.Sleep(2 * time.Second)
	p, err := s.Client.Pool(t.Context(), "web")
	if err != nil {
		t.Fatal(err)
	}
	if p.Claimed != 3 || p.Ready+p.Starting != 0 {
		t.Errorf("pool = %d claimed, %d ready, %d starting; want 3, 0, 0 (max 3)", p.Claimed, p.Ready, p.Starting)
	}
	r := connect(t, s, api.ConnectRequest{Key: "k3", Pool: "web", Wait: true})
	if r.Pool != "" {
		t.Errorf("connect past max: pool %q; want a cold spawn", r.Pool)
	}
	// A claimed backend's end makes room again.
	first, err := s.Client.LiveBackends(t.Context(), "k0")
	if err != nil || len(first) != 1 {
		t.Fatalf("k0's backend: %v, %v", first, err)
	}
	if err := s.Client.Terminate(t.Context(), first[0].ID, true); err != nil {
		t.Fatal(err)
	}
	s.waitReady("web", 1)
}

// A new template replaces the pool's unclaimed backends; a lower
// min_ready stops the ready ones beyond it; claimed ones run on.
func TestPool_Replace(t *testing.T) {
	s := startServer(t)
	s.putPool("web", s.template(0), 2, 0)
	claimed := connect(t, s, api.ConnectRequest{Key: "doc", Pool: "web", Wait: true})
	s.waitReady("web", 2)
	old := s.pooled("web")

	s.putPool("web", s.template(0, "VERSION", "2"), 2, 0)
	eventually(t, 30*time.Second, "the old template's backends to stop", func() bool {
		for id := range old {
			if s.pooled("web")[id] {
				return false
			}
		}
		return true
	})
	s.waitReady("web", 2)
	var env map[string]string
	r := connect(t, s, api.ConnectRequest{Key: "new", Pool: "web", Wait: true})
	get(t, r.URL, &env)
	if r.Pool != "web" || env["VERSION"] != "2" {
		t.Errorf("claimed after the replace: pool %q, VERSION %q; want web, 2", r.Pool, env["VERSION"])
	}
	s.waitReady("web", 2)

	tmpl := s.template(0, "VERSION", "2")
	if _, err := s.Client.PutPool(t.Context(), "web", api.PoolRequest{Spawn: &tmpl, MinReady: 1}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "one ready backend to stop", func() bool { return len(s.pooled("web")) == 1 })
	p := s.waitReady("web", 1)
	if p.Claimed != 2 {
		t.Errorf("claimed = %d; want 2 (doc's and new's run on)", p.Claimed)
	}
	again := connect(t, s, api.ConnectRequest{Key: "doc", Wait: true})
	if again.BackendID != claimed.BackendID {
		t.Errorf("doc after the replace: %s; want %s", again.BackendID, claimed.BackendID)
	}
}
