package e2e

import (
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
)

// TestSpawn_NamedRuntime: on a server that runs both process and docker, a
// spawn naming its runtime runs there; one naming none is chosen by what it
// gives (an image: docker; a command alone: process), as before; and one
// naming a runtime that cannot run it, or that the server does not run, is
// refused with 400 on spawn.runtime before anything starts.
func TestSpawn_NamedRuntime(t *testing.T) {
	needDocker(t)
	dir := t.TempDir()
	t.Cleanup(func() {
		if ids := instanceContainers(t, dir); len(ids) > 0 {
			t.Errorf("containers left behind after berth stopped: %v", ids)
			exec.Command("docker", append([]string{"rm", "-f"}, ids...)...).Run()
		}
	})
	s := start(t, opts{dataDir: dir, runtime: "auto"})

	runsIn := func(t *testing.T, c *api.ConnectResponse, want string) {
		t.Helper()
		if b := s.backend(t, c.BackendID); b.Runtime != want {
			t.Fatalf("backend %s runs in %q, want %q", c.BackendID, b.Runtime, want)
		}
		err := exec.Command("docker", "inspect", "berth-"+c.BackendID).Run()
		if inDocker := err == nil; inDocker != (want == "docker") {
			t.Fatalf("backend %s of runtime %s: a container berth-%[1]s exists: %v", c.BackendID, want, inDocker)
		}
		resp, body := get(t, c.URL, nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("backend %s through the proxy: %d %s", c.BackendID, resp.StatusCode, body)
		}
	}
	image := &berth.SpawnConfig{Image: demoImage, PullPolicy: "never"}
	command := &berth.SpawnConfig{Command: []string{bin.testbackend}}
	named := func(sc *berth.SpawnConfig, rt string) *berth.SpawnConfig { c := *sc; c.Runtime = rt; return &c }

	t.Run("docker named", func(t *testing.T) {
		runsIn(t, s.spawnReady(t, "rt-docker", named(image, "docker")), "docker")
	})
	t.Run("process named", func(t *testing.T) {
		runsIn(t, s.spawnReady(t, "rt-process", named(command, "process")), "process")
	})
	t.Run("image chosen for docker", func(t *testing.T) {
		runsIn(t, s.spawnReady(t, "rt-image", image), "docker")
	})
	t.Run("command alone chosen for process", func(t *testing.T) {
		runsIn(t, s.spawnReady(t, "rt-command", command), "process")
	})
	t.Run("refused", func(t *testing.T) {
		for _, tt := range []struct {
			name  string
			spawn *berth.SpawnConfig
			says  string
		}{
			{"process with only an image", named(image, "process"), "the process runtime cannot run this spawn: it runs commands, not images"},
			{"docker with only a command", named(command, "docker"), "the docker runtime cannot run this spawn: it runs images"},
			{"kubernetes, which it does not run", named(image, "kubernetes"), "this server runs docker, process"},
		} {
			t.Run(tt.name, func(t *testing.T) {
				resp, body := s.do(t, http.MethodPost, "/v1/connect", connectJSON(t, api.ConnectRequest{Key: "rt-refused", Spawn: tt.spawn}))
				if resp.StatusCode != http.StatusBadRequest {
					t.Fatalf("status %d, want 400; body %s", resp.StatusCode, body)
				}
				if e := apiError(t, body); e.Field != "spawn.runtime" || !strings.Contains(e.Message, tt.says) {
					t.Errorf("error %+v; want one on spawn.runtime saying %q", e, tt.says)
				}
			})
		}
		if bs, err := s.Client.LiveBackends(testCtx(t, 10*time.Second), "rt-refused"); err != nil || len(bs) != 0 {
			t.Errorf("live backends of the refused key: %v, %v; want none", bs, err)
		}
	})
}
