package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth"
)

// TestDevLeavesNothing: berth dev keeps its data dir out of Git, runs the
// image `berth demo-image` builds (the README's container example), and
// once stopped leaves nothing of its own: no spare directories, no
// network, no container.
func TestDevLeavesNothing(t *testing.T) {
	t.Parallel()
	needDocker(t)
	dir := t.TempDir()
	suffix := make([]byte, 4)
	rand.Read(suffix)
	network := "berth-e2e-" + hex.EncodeToString(suffix)
	image := "berth-e2e-demo-image:" + hex.EncodeToString(suffix)
	t.Cleanup(func() { exec.Command("docker", "rmi", "-f", image).Run() })

	// Registered before start, so it runs after the server's stop.
	t.Cleanup(func() {
		if spares, _ := filepath.Glob(filepath.Join(dir, "run", ".spare-*")); len(spares) > 0 {
			t.Errorf("spare directories left after berth dev stopped: %v", spares)
		}
		out, err := exec.Command("docker", "network", "ls", "-q", "--filter", "name=^"+network+"$").Output()
		if err != nil {
			t.Errorf("docker network ls: %v", err)
		} else if id := strings.TrimSpace(string(out)); id != "" {
			t.Errorf("network %s (%s) left after berth dev stopped", network, id)
			exec.Command("docker", "network", "rm", network).Run()
		}
		if ids := instanceContainers(t, dir); len(ids) > 0 {
			t.Errorf("containers left after berth dev stopped: %v", ids)
			exec.Command("docker", append([]string{"rm", "-f"}, ids...)...).Run()
		}
	})
	s := start(t, opts{dataDir: dir, runtime: "auto", extra: []string{"--docker-network", network}})
	ctx := testCtx(t, 2*time.Minute)

	ignore, err := os.ReadFile(filepath.Join(dir, ".gitignore"))
	if err != nil || !strings.Contains("\n"+string(ignore), "\n*\n") {
		t.Errorf("data dir's .gitignore: %q, %v; want a line *", ignore, err)
	}

	// The README's container example, on a machine that can pull nothing.
	if r := s.cli(t, ctx, nil, "demo-image", "--tag", image); r.code != 0 || !strings.Contains(r.stdout, image) {
		t.Fatalf("berth demo-image: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	c := s.spawnReady(t, "doc-image", &berth.SpawnConfig{Image: image, PullPolicy: "never",
		State: berth.StateConfig{Mode: berth.StateModeBlob}, GraceSeconds: ptr(5)})
	if b := s.backend(t, c.BackendID); b.Runtime != "docker" {
		t.Errorf("image backend runs on %q, want docker", b.Runtime)
	}
	if resp, body := get(t, c.URL, nil); resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "<") {
		t.Errorf("GET the demo image's URL: %d %.200s", resp.StatusCode, body)
	}

	// A process backend that ended leaves a spare directory for the next.
	p := s.spawnReady(t, "doc-process", tb(nil))
	s.terminate(t, p.BackendID, false)
	s.waitTerminated(t, p.BackendID, 20*time.Second)
	if spares, _ := filepath.Glob(filepath.Join(dir, "run", ".spare-*")); len(spares) == 0 {
		t.Error("no spare directory while berth dev runs: the check after its stop proves nothing")
	}
	if out, _ := exec.Command("docker", "network", "ls", "-q", "--filter", "name=^"+network+"$").Output(); len(strings.TrimSpace(string(out))) == 0 {
		t.Errorf("network %s missing while berth dev runs", network)
	}
}
