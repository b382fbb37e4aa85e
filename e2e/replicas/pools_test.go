package replicas

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
)

// Warm pools with replicas are per node: a pool put through one replica
// is kept warm on every replica, each claims its own backends, a key
// claimed on one is found there by the others, and a delete reaches them
// all.
func TestReplicas_PoolsPerNode(t *testing.T) {
	c := newCluster(t, 2)
	a, b := c.nodes[0], c.nodes[1]
	ctx := testCtx(t, 2*time.Minute)
	grace := 1
	tmpl := berth.SpawnConfig{Command: []string{bin.TestBackend}, GraceSeconds: &grace,
		Env: map[string]string{"TB_AUDIT_FILE": filepath.Join(c.shared, "audit.log")}}
	if _, err := a.Client.PutPool(ctx, "web", api.PoolRequest{Spawn: &tmpl, MinReady: 2}); err != nil {
		t.Fatal(err)
	}
	for _, nd := range c.nodes {
		eventually(t, 30*time.Second, nd.id+" to keep 2 of pool web ready", func() bool {
			p, err := nd.Client.Pool(ctx, "web")
			return err == nil && p.Ready == 2
		})
	}
	pooled := func(nd *node) map[string]bool {
		bs, err := nd.Client.LiveBackends(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]bool{}
		for _, bk := range bs {
			if bk.Pool == "web" && bk.Key == "" && bk.Node == nd.id {
				out[bk.ID] = true
			}
		}
		return out
	}
	if na, nb := pooled(a), pooled(b); len(na) != 2 || len(nb) != 2 {
		t.Fatalf("pooled backends: %v on %s, %v on %s; want 2 each", na, a.id, nb, b.id)
	}

	onB := pooled(b)
	claimed, err := b.Client.Connect(ctx, api.ConnectRequest{Key: "doc", Pool: "web", Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	if claimed.Pool != "web" || !onB[claimed.BackendID] {
		t.Fatalf("connect via %s: backend %s (pool %q); want one of its own pooled %v", b.id, claimed.BackendID, claimed.Pool, onB)
	}
	again, err := a.Client.Connect(ctx, api.ConnectRequest{Key: "doc", Pool: "web", Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	if again.BackendID != claimed.BackendID || again.Spawned {
		t.Errorf("connect via %s: %s (spawned %v); want %s, held on %s", a.id, again.BackendID, again.Spawned, claimed.BackendID, b.id)
	}
	if got := pooled(a); len(got) != 2 {
		t.Errorf("%s's pooled backends after a claim on %s: %v; want its 2 untouched", a.id, b.id, got)
	}

	if err := a.Client.DeletePool(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "every node's unclaimed backends of the deleted pool to stop", func() bool {
		return len(pooled(a)) == 0 && len(pooled(b)) == 0
	})
	if bk, err := b.Client.Backend(ctx, claimed.BackendID); err != nil || bk.State != berth.StateReady {
		t.Errorf("the claimed backend after the delete: %v, %v; want it ready", bk, err)
	}
}
