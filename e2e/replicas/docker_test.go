package replicas

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
	"github.com/berthhq/berth/internal/testbin"
)

// A replica running Docker backends that is killed leaves no container
// behind: its reaper removes them by the replica's own hard-kill deadline,
// before its lease expires and another replica takes the key. A replica
// started again on the same data dir stops the old reaper and serves on.
func TestReplicas_NodeKilledDocker(t *testing.T) {
	testbin.NeedDocker(t)
	image, err := testbin.Image(bin.TestBackend, "berth-replicas-testbackend")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(testbin.RemoveImages)
	c := startCluster(t, 2, "docker")
	a, dead := c.nodes[0], c.nodes[1]
	ctx := testCtx(t, 2*time.Minute)
	grace := 1
	spawn := &berth.SpawnConfig{Image: image, GraceSeconds: &grace}
	first, err := dead.Client.Connect(ctx, api.ConnectRequest{Key: "doc", Spawn: spawn, Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	if first.State != berth.StateReady {
		t.Fatalf("backend %s is %s (%s), want ready", first.BackendID, first.State, first.Reason)
	}
	if ids := containersOf(t, first.BackendID); len(ids) != 1 {
		t.Fatalf("backend %s has containers %v, want one", first.BackendID, ids)
	}
	killed := time.Now()
	dead.kill()
	eventually(t, 2*leaseTTL, "the dead replica's container to be removed", func() bool { return len(containersOf(t, first.BackendID)) == 0 })
	gone := time.Since(killed)

	moved := awaitMoved(ctx, t, a.Client, "doc", spawn, first)
	took := time.Since(killed)
	t.Logf("container removed %s after the kill, key moved %s after it (lease %s)", gone.Round(time.Millisecond), took.Round(time.Millisecond), leaseTTL)
	if gone >= took {
		t.Errorf("the container was removed %s after the kill, not before the key moved (%s)", gone, took)
	}
	if moved.FencingToken <= first.FencingToken || moved.State != berth.StateReady {
		t.Errorf("new backend: %s, fencing token %d (old %d); want ready, larger", moved.State, moved.FencingToken, first.FencingToken)
	}

	dead.restart()
	if got, err := dead.Client.Connect(ctx, api.ConnectRequest{Key: "doc"}); err != nil || got.BackendID != moved.BackendID {
		t.Errorf("connect via the restarted replica: %v, %v; want %s", got, err, moved.BackendID)
	}
}

// containersOf lists the ids of backend id's containers, running or not.
func containersOf(t *testing.T, id string) []string {
	t.Helper()
	out, err := exec.Command("docker", "ps", "-aq", "--filter", "label=berth.backend="+id).Output()
	if err != nil {
		t.Fatalf("docker ps: %v", err)
	}
	return strings.Fields(string(out))
}
