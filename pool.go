package berth

import (
	"encoding/json"
	"fmt"
	"regexp"
	"time"
)

// Pool is a named warm pool: Berth keeps MinReady backends of Spawn
// started and ready without a key, and a connect for a new key claims one
// of them instead of spawning (server/pool.go, DESIGN.md "Warm pools").
type Pool struct {
	Name  string      `json:"name"`
	Spawn SpawnConfig `json:"spawn"`
	// MinReady is how many unclaimed backends the pool keeps ready.
	MinReady int `json:"min_ready"`
	// Max caps the live backends the pool has started, claimed or not; 0
	// means no cap. Connects beyond it are cold spawns.
	Max       int       `json:"max,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// MaxPoolReady bounds min_ready: a pool is a buffer, not a fleet.
const MaxPoolReady = 1000

var poolName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// ValidatePoolName checks a pool's name: 1 to 63 of [a-z0-9._-], starting
// with a letter or digit (it appears in URLs and metric labels).
func ValidatePoolName(name string) error {
	if !poolName.MatchString(name) {
		return fmt.Errorf("must be 1 to 63 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit (got %q)", name)
	}
	return nil
}

// Validate checks a pool definition; errors are *FieldError named as in
// the JSON body of PUT /v1/pools/{name}.
func (p *Pool) Validate() error {
	if err := ValidatePoolName(p.Name); err != nil {
		return &FieldError{Field: "name", Message: err.Error()}
	}
	if err := p.Spawn.Validate("spawn"); err != nil {
		return err
	}
	// A pooled backend starts before its key is known, so its state can
	// only reach it through the backend API after the claim: dir and
	// volume are prepared on disk before the start, for one key.
	switch m := p.Spawn.StateMode(); m {
	case StateModeNone, StateModeBlob:
	default:
		return &FieldError{Field: "spawn.state.mode", Message: fmt.Sprintf("a pool's backends start before they have a key, so their state mode must be none or blob (loaded at claim time), not %s", m)}
	}
	if p.MinReady < 0 || p.MinReady > MaxPoolReady {
		return &FieldError{Field: "min_ready", Message: fmt.Sprintf("must be between 0 and %d", MaxPoolReady)}
	}
	if p.Max < 0 || (p.Max > 0 && p.Max < p.MinReady) {
		return &FieldError{Field: "max", Message: "must be 0 (no cap) or at least min_ready"}
	}
	return nil
}

// SameSpawn reports whether two spawn configs ask for the same backend,
// as a connect whose spawn equals a pool's template does: compared as
// their JSON, so nil and empty maps, and field order, do not matter.
func SameSpawn(a, b *SpawnConfig) bool {
	ja, err1 := json.Marshal(a)
	jb, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && string(ja) == string(jb)
}
