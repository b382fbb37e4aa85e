package berth

import "time"

// IdleAction is what a backend's idleness (max_idle_seconds without a
// request or an open connection) does to it.
type IdleAction string

const (
	// IdleStop stops the backend, with its final save (the default).
	IdleStop IdleAction = "stop"
	// IdleFreeze freezes it in place: its processes stop being scheduled
	// but keep their memory, sockets and key, and the next connect or
	// proxied request thaws it. After max_frozen_seconds frozen it is
	// stopped as IdleStop would (thawed first, so it can save).
	IdleFreeze IdleAction = "freeze"
)

// DefaultMaxFrozen bounds how long a frozen backend holds its memory and
// key when the spawn does not say.
const DefaultMaxFrozen = time.Hour

func (a IdleAction) validate(field string) error {
	switch a {
	case "", IdleStop, IdleFreeze:
		return nil
	}
	return fieldErr(field, "must be stop or freeze")
}

// Freezes reports whether idleness freezes the backend rather than stopping it.
func (c *SpawnConfig) Freezes() bool { return c.IdleAction == IdleFreeze }

// MaxFrozen is how long a backend stays frozen before it is stopped.
func (c *SpawnConfig) MaxFrozen() time.Duration {
	if c.MaxFrozenSeconds == 0 {
		return DefaultMaxFrozen
	}
	return time.Duration(c.MaxFrozenSeconds) * time.Second
}
