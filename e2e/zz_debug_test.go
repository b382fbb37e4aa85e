package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

func TestZZDebug(t *testing.T) {
	s := start(t, opts{})
	pidfile := filepath.Join(t.TempDir(), "child.pid")
	c := s.spawnReady(t, "g", tb(map[string]string{"TB_CHILD": "1", "TB_CHILD_PIDFILE": pidfile}))
	raw, _ := os.ReadFile(pidfile)
	child, _ := strconv.Atoi(string(raw))
	time.Sleep(300 * time.Millisecond)
	envRaw, err := os.ReadFile("/proc/" + string(raw) + "/environ")
	t.Logf("child %d alive %v environ len %d err %v", child, alive(child), len(envRaw), err)
	for _, p := range procs() {
		if p.pid == child {
			t.Logf("found child: %v", p.env["BERTH_BACKEND_ID"])
		}
	}
	t.Logf("backend pids %v id %s", backendPIDs(c.BackendID), c.BackendID)
	_, b := s.do(t, "GET", "/v1/backends/"+c.BackendID+"/logs", "")
	t.Logf("logs: %s", b)
}
