package berth

import (
	"errors"
	"testing"
	"time"
)

func TestSpawnConfig_ValidateFreeze(t *testing.T) {
	for _, tc := range []struct {
		name   string
		action IdleAction
		frozen int
		field  string // "" when valid
	}{
		{"default", "", 0, ""},
		{"stop", IdleStop, 0, ""},
		{"freeze", IdleFreeze, 0, ""},
		{"freeze with a bound", IdleFreeze, 60, ""},
		{"a week", IdleFreeze, 7 * 24 * 3600, ""},
		{"unknown action", "hibernate", 0, "spawn.idle_action"},
		{"negative bound", IdleFreeze, -1, "spawn.max_frozen_seconds"},
		{"over a week", IdleFreeze, 7*24*3600 + 1, "spawn.max_frozen_seconds"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := SpawnConfig{Command: []string{"x"}, IdleAction: tc.action, MaxFrozenSeconds: tc.frozen}
			err := c.Validate("spawn")
			var fe *FieldError
			switch {
			case tc.field == "" && err != nil:
				t.Errorf("Validate: %v, want nil", err)
			case tc.field != "" && (!errors.As(err, &fe) || fe.Field != tc.field):
				t.Errorf("Validate: %v, want a FieldError on %s", err, tc.field)
			}
		})
	}
}

func TestSpawnConfig_MaxFrozen(t *testing.T) {
	if got := (&SpawnConfig{}).MaxFrozen(); got != DefaultMaxFrozen {
		t.Errorf("MaxFrozen() of 0 = %v, want the default %v", got, DefaultMaxFrozen)
	}
	if got := (&SpawnConfig{MaxFrozenSeconds: 90}).MaxFrozen(); got != 90*time.Second {
		t.Errorf("MaxFrozen() of 90 = %v, want 90s", got)
	}
	if r, ok := IntRange("max_frozen_seconds"); !ok || r != "between 1 and 604800 (0 means the default, 3600)" {
		t.Errorf("IntRange(max_frozen_seconds) = %q, %v", r, ok)
	}
}
