package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
	"github.com/berthhq/berth/internal/testbin"
)

// demoImage is an image FROM scratch holding only the static berth binary,
// running its demo backend: the notepad, saving through the SDK.
const demoImage = "berth-e2e-demo:test"

var buildDemoImage = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "berth-e2e-image-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)
	data, err := os.ReadFile(bin.berth)
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "berth"), data, 0o755); err != nil {
		return "", err
	}
	df := "FROM scratch\nCOPY berth /berth\nENTRYPOINT [\"/berth\", \"demo-backend\"]\n"
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(df), 0o644); err != nil {
		return "", err
	}
	out, err := exec.Command("docker", "build", "-q", "-t", demoImage, dir).CombinedOutput()
	return string(out), err
})

func needDocker(t *testing.T) {
	t.Helper()
	if err := exec.Command("docker", "info").Run(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("Docker Engine not reachable (%v); CI must have it", err)
		}
		t.Skipf("Docker Engine not reachable (%v); start dockerd to run this test", err)
	}
	if out, err := buildDemoImage(); err != nil {
		t.Fatalf("build %s: %v\n%s", demoImage, err, out)
	}
}

// instanceContainers lists the containers (running or not) of the Berth
// whose data dir is dir, by the instance label it derives from that dir:
// backends' containers and network sandboxes, or with more filters (e.g.
// "label=berth.managed=true") only those that match them too.
func instanceContainers(t *testing.T, dir string, filters ...string) []string {
	t.Helper()
	abs, _ := filepath.Abs(dir)
	sum := sha256.Sum256([]byte(abs))
	args := []string{"ps", "-aq", "--filter", "label=berth.instance=berth-" + hex.EncodeToString(sum[:6])}
	for _, f := range filters {
		args = append(args, "--filter", f)
	}
	out, err := exec.Command("docker", args...).Output()
	if err != nil {
		t.Fatalf("docker ps: %v", err)
	}
	return strings.Fields(string(out))
}

// waitMetric waits until s's /metrics has line.
func waitMetric(t *testing.T, s *server, line string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, body := get(t, s.API+"/metrics", nil)
		if strings.Contains(string(body), "\n"+line+"\n") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q in /metrics after 30 s", line)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// backends filters instanceContainers to backends' containers.
const backends = "label=berth.managed=true"

func TestDocker(t *testing.T) {
	needDocker(t)
	dir := t.TempDir()
	t.Cleanup(func() {
		if ids := instanceContainers(t, dir); len(ids) > 0 {
			t.Errorf("containers left behind after berth stopped: %v", ids)
			exec.Command("docker", append([]string{"rm", "-f"}, ids...)...).Run()
		}
	})
	backendAPI := testbin.FreeAddr(t)
	s1 := start(t, opts{dataDir: dir, runtime: "docker", backendAPI: backendAPI})
	spawn := &berth.SpawnConfig{Image: demoImage, PullPolicy: "never",
		State: berth.StateConfig{Mode: berth.StateModeBlob}, GraceSeconds: ptr(10)}
	ctx := testCtx(t, 2*time.Minute)

	// Let the pool fill, so the backend joins a network sandbox.
	waitMetric(t, s1, "berth_docker_sandboxes_ready 2")
	c := s1.spawnReady(t, "doc-docker", spawn)
	if b := s1.backend(t, c.BackendID); b.Runtime != "docker" {
		t.Fatalf("runtime %q, want docker", b.Runtime)
	}
	conn := dialWS(t, ctx, c.URL)
	wsRoundTrip(t, ctx, conn, "typed into a container")
	conn.CloseNow()
	// The network sandbox the backend joined, if the pool had one ready.
	out, err := exec.Command("docker", "inspect", "-f", `{{index .Config.Labels "berth.network-sandbox"}}`, "berth-"+c.BackendID).Output()
	if err != nil {
		t.Fatalf("docker inspect: %v", err)
	}
	sandbox := strings.TrimSpace(string(out))
	if sandbox == "" {
		t.Fatal("the backend joined the network directly although two sandboxes were ready")
	}

	// SIGKILL berth; the container outlives it, and the next berth on the
	// same data dir re-adopts it. (Started here, not in a subtest, so it
	// lives for the whole test.)
	s1.kill()
	if ids := instanceContainers(t, dir, backends); len(ids) != 1 {
		t.Fatalf("backend containers after berth was killed: %v, want the one backend still running", ids)
	}
	s2 := start(t, opts{dataDir: dir, runtime: "docker", backendAPI: backendAPI})
	s1 = s2

	t.Run("recovered after SIGKILL", func(t *testing.T) {
		if b := s2.backend(t, c.BackendID); b.State != berth.StateReady {
			t.Fatalf("backend after restart: %q (%s), want ready (re-adopted)", b.State, b.Reason)
		}
		again := s2.connect(t, api.ConnectRequest{Key: "doc-docker", Spawn: spawn, Wait: true})
		if again.Spawned || again.BackendID != c.BackendID {
			t.Fatalf("connect after restart: %s spawned=%v, want the recovered %s", again.BackendID, again.Spawned, c.BackendID)
		}
		resp, body := get(t, again.URL+"api/doc", nil)
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "typed into a container") {
			t.Fatalf("recovered backend's document: %d %s", resp.StatusCode, body)
		}
	})

	t.Run("state saved from the container survives it", func(t *testing.T) {
		s := s1
		s.terminate(t, c.BackendID, false)
		if b := s.waitTerminated(t, c.BackendID, 30*time.Second); b.Reason != berth.ReasonRequested {
			t.Fatalf("reason %q, want requested", b.Reason)
		}
		if ids := instanceContainers(t, dir, backends); len(ids) != 0 {
			t.Fatalf("backend containers after the backend terminated: %v, want none", ids)
		}
		// Its network sandbox went with it; the pool's ready ones remain.
		if exec.Command("docker", "inspect", sandbox).Run() == nil {
			t.Fatalf("network sandbox %s outlived its backend", sandbox)
		}
		next := s.spawnReady(t, "doc-docker", spawn)
		if next.BackendID == c.BackendID || next.FencingToken <= c.FencingToken {
			t.Fatalf("next backend %s fence %d; want a new one above %d", next.BackendID, next.FencingToken, c.FencingToken)
		}
		resp, body := get(t, next.URL+"api/doc", nil)
		var doc struct{ Text string }
		json.Unmarshal(body, &doc)
		if resp.StatusCode != http.StatusOK || doc.Text != "typed into a container" {
			t.Fatalf("next backend's document: %d %q, want the text the last one saved", resp.StatusCode, doc.Text)
		}
	})

	t.Run("hardened", func(t *testing.T) {
		bs, err := s1.Client.LiveBackends(context.Background(), "doc-docker")
		if err != nil || len(bs) != 1 {
			t.Fatalf("live backends: %v %v", bs, err)
		}
		out, err := exec.Command("docker", "inspect", "-f",
			"{{.Config.User}}|{{.HostConfig.CapDrop}}|{{.HostConfig.SecurityOpt}}|{{.HostConfig.Memory}}|{{.HostConfig.PidsLimit}}",
			"berth-"+bs[0].ID).Output()
		if err != nil {
			t.Fatalf("docker inspect: %v", err)
		}
		got := strings.TrimSpace(string(out))
		for _, want := range []string{"65534:65534|", "ALL", "no-new-privileges", "|536870912|", "|256"} {
			if !strings.Contains(got, want) {
				t.Errorf("container settings %q lack %q", got, want)
			}
		}
	})
}
