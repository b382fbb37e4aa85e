package pools

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
	"github.com/berthhq/berth/internal/testbin"
)

// Pools with the Docker runtime: a claimed container loads the key's
// state saved by the key's last backend, a killed pooled container is
// replaced, and a restarted Berth re-adopts the pool's containers.
func TestPool_Docker(t *testing.T) {
	testbin.NeedDocker(t)
	image, err := testbin.Image(bin.TestBackend, "berth-pools-testbackend")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(testbin.RemoveImages)
	// Runs after the server stopped (cleanups run last first): berth serve
	// leaves its network for other servers on the engine.
	t.Cleanup(func() { exec.Command("docker", "network", "rm", "berth-pools-test").Run() })
	s := startServer(t, "--runtime", "docker", "--docker-network", "berth-pools-test")
	ctx := t.Context()
	grace := 1
	tmpl := berth.SpawnConfig{Image: image, GraceSeconds: &grace, State: berth.StateConfig{Mode: berth.StateModeBlob}}

	first := connect(t, s, api.ConnectRequest{Key: "notes", Spawn: &tmpl, Wait: true})
	put(t, first.URL+"state", "saved by a cold container")
	if err := s.Client.Terminate(ctx, first.BackendID, false); err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "the first container to terminate", func() bool {
		b, err := s.Client.Backend(ctx, first.BackendID)
		return err == nil && b.State == berth.StateTerminated
	})

	s.putPool("box", tmpl, 2, 0)
	claimed := connect(t, s, api.ConnectRequest{Key: "notes", Pool: "box", Wait: true})
	if claimed.Pool != "box" || claimed.FencingToken <= first.FencingToken {
		t.Fatalf("connect = %+v; want a claim from box, fenced past %d", claimed, first.FencingToken)
	}
	var id identity
	get(t, claimed.URL+"identity", &id)
	if id.Key != "notes" || id.LoadedState == nil || *id.LoadedState != "saved by a cold container" {
		t.Errorf("claimed container says %+v; want key notes and the saved state", id)
	}
	s.waitReady("box", 2)

	// Kill one pooled container behind Berth's back.
	var victim string
	for bid := range s.pooled("box") {
		victim = bid
		break
	}
	ids := containersOf(t, victim)
	if len(ids) != 1 {
		t.Fatalf("backend %s has containers %v; want one", victim, ids)
	}
	if out, err := exec.Command("docker", "kill", ids[0]).CombinedOutput(); err != nil {
		t.Fatalf("docker kill: %v: %s", err, out)
	}
	eventually(t, 60*time.Second, "the killed container's backend to end", func() bool {
		b, err := s.Client.Backend(ctx, victim)
		return err == nil && b.State == berth.StateTerminated
	})
	s.waitReady("box", 2)
	before := s.pooled("box")
	if before[victim] {
		t.Errorf("killed %s still counted ready", victim)
	}

	s.kill()
	s.restart()
	s.waitReady("box", 2)
	after := s.pooled("box")
	for bid := range before {
		if !after[bid] {
			t.Errorf("pooled container %s was not re-adopted (ready now: %v)", bid, after)
		}
	}
	again := connect(t, s, api.ConnectRequest{Key: "notes", Pool: "box", Wait: true})
	if again.BackendID != claimed.BackendID {
		t.Fatalf("notes after restart: %s; want %s", again.BackendID, claimed.BackendID)
	}
	get(t, again.URL+"identity", &id)
	if id.Key != "notes" || !id.Claimed {
		t.Errorf("re-adopted container says %+v; want claimed for notes", id)
	}
	put(t, again.URL+"state", "saved after the restart")
	var buf strings.Builder
	if err := s.Client.StateData(ctx, "notes", "", &buf); err != nil || buf.String() != "saved after the restart" {
		t.Errorf("notes' state = %q, %v; want the re-adopted container's save", buf.String(), err)
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
