package replicas

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
	"github.com/berthhq/berth/internal/testbin"
)

// Replicas that run different runtimes: a spawn goes to a node that runs
// the runtime it needs, also when the replica that took the connect does
// not run it (an image through a process-only node runs in Docker on
// another); a runtime no node runs is refused naming spawn.runtime; and
// with every node that runs it drained, a spawn is not placed on one that
// does not (503), however idle.
func TestReplicas_PlacedByRuntime(t *testing.T) {
	testbin.NeedDocker(t)
	image, err := testbin.Image(bin.TestBackend, "berth-replicas-testbackend")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(testbin.RemoveImages)
	c := startCluster(t, 1, "process")
	procNode := c.nodes[0]
	dockNode := c.add(&node{c: c, id: "n2", store: c.store, extra: []string{"--runtime", "docker"}})
	dockNode.waitHealthy()
	ctx := testCtx(t, 2*time.Minute)
	time.Sleep(2 * leaseRenew) // placement reads the nodes at each renewal
	grace := 1

	placed := func(t *testing.T, via *node, key string, spawn *berth.SpawnConfig, onto *node, runtime string) {
		t.Helper()
		res, err := via.Client.Connect(ctx, api.ConnectRequest{Key: key, Spawn: spawn, Wait: true})
		if err != nil {
			t.Fatal(err)
		}
		if res.State != berth.StateReady {
			t.Fatalf("connect %s through %s: %s (%s), want ready", key, via.id, res.State, res.Reason)
		}
		b, err := via.Client.Backend(ctx, res.BackendID)
		if err != nil || b.Node != onto.id || b.Runtime != runtime {
			t.Fatalf("backend of %s: %+v, %v; want it on %s in %s", key, b, err, onto.id, runtime)
		}
		if inDocker := len(containersOf(t, res.BackendID)) == 1; inDocker != (runtime == "docker") {
			t.Fatalf("backend %s of runtime %s has a container: %v", res.BackendID, runtime, inDocker)
		}
		resp, err := http.Get(via.Proxy + "/" + res.Token + "/echo")
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET through %s's proxy: %v %v", via.id, resp, err)
		}
		resp.Body.Close()
	}

	t.Run("image through the process node runs in docker on the other", func(t *testing.T) {
		placed(t, procNode, "img", &berth.SpawnConfig{Image: image, GraceSeconds: &grace}, dockNode, "docker")
	})
	t.Run("command through the docker node runs as a process on the other", func(t *testing.T) {
		placed(t, dockNode, "cmd", c.spawn(), procNode, "process")
	})
	t.Run("named runtime only another node runs", func(t *testing.T) {
		sc := c.spawn()
		sc.Runtime = "process"
		placed(t, dockNode, "named", sc, procNode, "process")
	})
	t.Run("named runtime no node runs", func(t *testing.T) {
		sc := &berth.SpawnConfig{Image: image, Runtime: "kubernetes"}
		_, err := procNode.Client.Connect(ctx, api.ConnectRequest{Key: "k8s", Spawn: sc})
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Status != http.StatusBadRequest || ae.Field != "spawn.runtime" ||
			!strings.Contains(ae.Message, "this server runs process and other nodes docker") {
			t.Fatalf("connect naming kubernetes: %v; want 400 on spawn.runtime saying which runtimes the nodes run", err)
		}
	})
	t.Run("only nodes with the runtime", func(t *testing.T) {
		if out := berthCLI(t, procNode, "node", "drain", dockNode.id); !strings.Contains(out, "Drained "+dockNode.id) {
			t.Fatalf("berth node drain: %q", out)
		}
		time.Sleep(2 * leaseRenew)
		_, err := procNode.Client.Connect(ctx, api.ConnectRequest{Key: "img2", Spawn: &berth.SpawnConfig{Image: image}})
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Status != http.StatusServiceUnavailable || !strings.Contains(ae.Message, "docker runtime") {
			t.Fatalf("image spawn with the docker node drained: %v; want 503 naming the docker runtime", err)
		}
		if bs, err := procNode.Client.LiveBackends(ctx, "img2"); err != nil || len(bs) != 0 {
			t.Errorf("live backends of img2: %v, %v; want none", bs, err)
		}
	})
}
