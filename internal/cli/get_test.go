package cli

import (
	"net/http"
	"testing"

	"github.com/berthhq/berth"
)

func getAPI(t *testing.T) string {
	setClock(t)
	b := psBackends()[0]
	b.User = "alice"
	b.FencingToken = 3
	b.Node = "local"
	b.Spawn.Env = map[string]string{"TOKEN": "s3cret", "MODE": "x"}
	b.Spawn.MaxIdleSeconds = new(int) // 0: never idle
	b.Spawn.State = berth.StateConfig{Mode: berth.StateModeBlob}
	return fakeAPI(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/backends/bk_live" {
			writeError(w, http.StatusNotFound, "not_found", "no backend "+r.URL.Path[len("/v1/backends/"):])
			return
		}
		writeJSON(w, http.StatusOK, b)
	})
}

func TestGet(t *testing.T) {
	url := getAPI(t)
	code, out, stderr := runCLI(t, "get", "--api", url, "bk_live")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	golden(t, "get.golden", out)

	code, out, stderr = runCLI(t, "inspect", "--api", url, "--output", "json", "bk_live")
	if code != 0 {
		t.Fatalf("inspect --output json: exit %d: %s", code, stderr)
	}
	golden(t, "get.json.golden", out)
}
