package pools

import (
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
)

// An unclaimed backend is never idle; once claimed, it goes idle as any
// backend, counted from its claim.
func TestPool_IdleAfterClaim(t *testing.T) {
	s := startServer(t)
	tmpl := s.template(0)
	idle := 1
	tmpl.MaxIdleSeconds = &idle
	s.putPool("web", tmpl, 1, 0)
	before := s.pooled("web")
	time.Sleep(2500 * time.Millisecond) // well past max_idle_seconds
	if after := s.pooled("web"); len(after) != 1 || !equalSets(before, after) {
		t.Fatalf("unclaimed backends %v became %v; want the same one kept, never idle", before, after)
	}
	r := connect(t, s, api.ConnectRequest{Key: "doc", Pool: "web", Wait: true})
	if !before[r.BackendID] {
		t.Fatalf("connect got %s; want the pooled one", r.BackendID)
	}
	eventually(t, 15*time.Second, "the claimed backend to go idle", func() bool {
		b, err := s.Client.Backend(t.Context(), r.BackendID)
		return err == nil && b.State == berth.StateTerminated
	})
	b, _ := s.Client.Backend(t.Context(), r.BackendID)
	if b.Reason != berth.ReasonIdle {
		t.Errorf("claimed backend ended %s; want idle", b.Reason)
	}
}

func equalSets(a, b map[string]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}
