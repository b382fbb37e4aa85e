package replicas

import (
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
)

// A frozen backend thaws for a request that reaches another replica's
// proxy: that proxy forwards it to the owner node's proxy, which thaws
// the backend before it forwards the request, memory intact.
func TestReplicas_FrozenThawsThroughAnyProxy(t *testing.T) {
	c := newCluster(t, 2)
	owner, other := c.nodes[0], c.nodes[1]
	ctx := testCtx(t, time.Minute)
	sc := c.spawn()
	sc.MaxIdleSeconds, sc.IdleAction = ptr(1), berth.IdleFreeze
	res, err := owner.Client.Connect(ctx, api.ConnectRequest{Key: "doc-frozen", Spawn: sc, Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	rec, err := owner.Client.Backend(ctx, res.BackendID)
	if err != nil || rec.Node != owner.id {
		t.Fatalf("backend %s runs on %q (%v), want %s", res.BackendID, rec.Node, err, owner.id)
	}
	viaOther := other.Proxy + "/" + res.Token + "/count"
	count := func() string {
		t.Helper()
		resp, err := http.Get(viaOther)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /count through %s's proxy: %s %s", other.id, resp.Status, b)
		}
		return string(b)
	}
	if got := count(); got != "1" {
		t.Fatalf("/count = %s, want 1", got)
	}
	eventually(t, 15*time.Second, "the backend frozen on its owner", func() bool {
		b, err := owner.Client.Backend(ctx, res.BackendID)
		return err == nil && b.FrozenAt != nil
	})
	if got := owner.metric(t, "berth_backends_frozen"); got != "1" {
		t.Errorf("berth_backends_frozen on the owner = %q, want 1", got)
	}
	if got := count(); got != "2" {
		t.Errorf("/count through the other replica after the freeze = %s, want 2 (thawed, memory kept)", got)
	}
	b, err := owner.Client.Backend(ctx, res.BackendID)
	if err != nil || b.FrozenAt != nil || b.State != berth.StateReady {
		t.Errorf("after the request the backend is %+v (%v); want ready, not frozen", b, err)
	}
}

func ptr[T any](v T) *T { return &v }
