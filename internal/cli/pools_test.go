package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadPoolsFile(t *testing.T) {
	for _, tt := range []struct {
		name, body, err string
		n               int
	}{
		{"ok", `{"pools": [{"name": "web", "spawn": {"command": ["./app"]}, "min_ready": 2, "max": 5},
			{"name": "lsp", "spawn": {"image": "lsp:1", "state": {"mode": "blob"}}, "min_ready": 1}]}`, "", 2},
		{"unknown field", `{"pools": [{"name": "web", "spawn": {"command": ["./app"]}, "min_redy": 2}]}`, "min_redy", 0},
		{"no spawn", `{"pools": [{"name": "web", "min_ready": 2}]}`, "pools[0].spawn", 0},
		{"bad name", `{"pools": [{"name": "Web!", "spawn": {"command": ["x"]}}]}`, "pools[0].name", 0},
		{"twice", `{"pools": [{"name": "a", "spawn": {"command": ["x"]}}, {"name": "a", "spawn": {"command": ["x"]}}]}`, "twice", 0},
		{"dir mode", `{"pools": [{"name": "a", "spawn": {"command": ["x"], "state": {"mode": "dir"}}}]}`, "spawn.state.mode", 0},
		{"max below min", `{"pools": [{"name": "a", "spawn": {"command": ["x"]}, "min_ready": 3, "max": 2}]}`, "pools[0].max", 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "pools.json")
			os.WriteFile(path, []byte(tt.body), 0o600)
			ps, err := readPoolsFile(path)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v; want one naming %s", err, tt.err)
				}
				return
			}
			if err != nil || len(ps) != tt.n {
				t.Fatalf("readPoolsFile = %v, %v; want %d pools", ps, err, tt.n)
			}
			if ps[0].Name != "web" || ps[0].MinReady != 2 || ps[0].Max != 5 || ps[0].Spawn.Command[0] != "./app" {
				t.Errorf("pools[0] = %+v", ps[0])
			}
		})
	}
}
