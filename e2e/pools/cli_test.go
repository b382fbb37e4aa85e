package pools

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth/api"
	"github.com/berthhq/berth/internal/testbin"
)

// berth pool put / ls / rm and berth connect --pool, against a server.
func TestPool_CLI(t *testing.T) {
	s := startServer(t)
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(bin.Berth, args...)
		cmd.Env = append(testbin.CleanEnv(), "BERTH_URL="+s.API, "BERTH_API_KEY="+apiKey)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("berth %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	out := run("pool", "put", "cli", "--min-ready", "2", "--max", "4", "--env", "TB_READY_DELAY_MS=10", "--", bin.TestBackend)
	if !strings.Contains(out, "Pool cli keeps 2 ready") {
		t.Errorf("pool put said %q", out)
	}
	s.waitReady("cli", 2)
	out = run("pool", "ls")
	if !strings.Contains(out, "cli") || !strings.Contains(out, bin.TestBackend) {
		t.Errorf("pool ls:\n%s", out)
	}
	var list api.PoolList
	if err := json.Unmarshal([]byte(run("pool", "ls", "--output", "json")), &list); err != nil || len(list.Pools) != 1 || list.Pools[0].Ready != 2 || list.Pools[0].Max != 4 {
		t.Errorf("pool ls --output json = %+v, %v", list, err)
	}
	var resp api.ConnectResponse
	if err := json.Unmarshal([]byte(run("connect", "--pool", "cli", "--output", "json", "doc")), &resp); err != nil || resp.Pool != "cli" {
		t.Errorf("connect --pool = %+v, %v; want a claim from cli", resp, err)
	}
	run("pool", "rm", "cli")
	eventually(t, 30*time.Second, "the removed pool's backends to stop", func() bool { return len(s.pooled("cli")) == 0 })
	if out := run("pool", "ls"); !strings.Contains(out, "No pools") {
		t.Errorf("pool ls after rm:\n%s", out)
	}
}
