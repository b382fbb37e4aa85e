package cli

import (
	"fmt"
	"os"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
	"github.com/berthhq/berth/internal/jsonbody"
)

// poolsFile is the --pools file: the pools to create or replace at start.
type poolsFile struct {
	Pools []poolEntry `json:"pools"`
}

type poolEntry struct {
	Name string `json:"name"`
	api.PoolRequest
}

// readPoolsFile reads the --pools file, strictly (a typo in a field is an
// error, not a default); "" reads none.
func readPoolsFile(path string) ([]berth.Pool, error) {
	if path == "" {
		return nil, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--pools: %w", err)
	}
	defer f.Close()
	var pf poolsFile
	if err := jsonbody.Decode(f, &pf); err != nil {
		return nil, fmt.Errorf("--pools %s: %w", path, err)
	}
	var out []berth.Pool
	seen := make(map[string]bool)
	for i, e := range pf.Pools {
		if e.Spawn == nil {
			return nil, fmt.Errorf("--pools %s: pools[%d].spawn: is required", path, i)
		}
		if seen[e.Name] {
			return nil, fmt.Errorf("--pools %s: pools[%d].name: %q is defined twice", path, i, e.Name)
		}
		seen[e.Name] = true
		p := berth.Pool{Name: e.Name, Spawn: *e.Spawn, MinReady: e.MinReady, Max: e.Max, Schedule: e.Schedule}
		if err := p.Validate(); err != nil {
			return nil, fmt.Errorf("--pools %s: pools[%d].%w", path, i, err)
		}
		out = append(out, p)
	}
	return out, nil
}
