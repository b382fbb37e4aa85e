package pools

import (
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
)

// Berth killed while a claim is on its way (recorded in the store, the
// backend still loading): restarted, it repeats the claim, so the backend
// it re-adopted as the key's holder knows the key it serves.
func TestPool_KilledMidClaim(t *testing.T) {
	s := startServer(t)
	s.putPool("slow", s.template(0, "TB_CLAIM_DELAY_MS", "1500"), 1, 0)
	pooled := s.pooled("slow")

	go s.Client.Connect(t.Context(), api.ConnectRequest{Key: "doc", Pool: "slow", Wait: true}) // dies with Berth
	var holder string
	eventually(t, 10*time.Second, "the claim to be recorded", func() bool {
		bs, err := s.Client.LiveBackends(t.Context(), "doc")
		if err != nil || len(bs) == 0 {
			return false
		}
		holder = bs[0].ID
		return true
	})
	if !pooled[holder] {
		t.Fatalf("doc is held by %s; want the pooled %v", holder, pooled)
	}
	s.kill() // mid-claim: the backend sleeps in its claim handler
	s.restart()

	r := connect(t, s, api.ConnectRequest{Key: "doc", Pool: "slow", Wait: true})
	if r.BackendID != holder || r.Spawned {
		t.Fatalf("doc after the restart: %s (spawned %v); want %s, re-adopted", r.BackendID, r.Spawned, holder)
	}
	// Berth serves once the repeated claim is answered: the key's first
	// request after the restart finds a backend that knows it.
	var id identity
	get(t, r.URL+"identity", &id)
	if !id.Claimed || id.Key != "doc" || id.FencingToken != r.FencingToken {
		t.Errorf("re-adopted backend says %+v; want claimed for doc at fence %d", id, r.FencingToken)
	}
	b, err := s.Client.Backend(t.Context(), holder)
	if err != nil || b.State != berth.StateReady {
		t.Errorf("holder after the restart: %+v, %v; want ready", b, err)
	}
}
