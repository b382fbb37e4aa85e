// Package berth holds Berth's domain types: backends, keys, their lifecycle
// and the spawn configuration. It imports no adapter (store, runtime, blob);
// every adapter imports it.
package berth

import (
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// State is a backend's lifecycle state. States only move forward:
// scheduled → starting → ready → terminating → terminated, and any state may
// jump ahead to a later one (a spawn that fails goes straight to terminated).
type State string

const (
	StateScheduled   State = "scheduled"
	StateStarting    State = "starting"
	StateReady       State = "ready"
	StateTerminating State = "terminating"
	StateTerminated  State = "terminated"
)

// Rank orders states; a transition is allowed only to a strictly higher rank.
// Stores enforce this in the same statement as the update.
func (s State) Rank() int {
	switch s {
	case StateScheduled:
		return 1
	case StateStarting:
		return 2
	case StateReady:
		return 3
	case StateTerminating:
		return 4
	case StateTerminated:
		return 5
	}
	return 0
}

// Valid reports whether s is one of the five states.
func (s State) Valid() bool { return s.Rank() > 0 }

// Live reports whether a backend in this state still holds its key.
func (s State) Live() bool { return s.Valid() && s != StateTerminated }

// CanMoveTo reports whether the lifecycle allows s → to.
func (s State) CanMoveTo(to State) bool { return to.Valid() && to.Rank() > s.Rank() }

// Reason says why a backend terminated.
type Reason string

const (
	ReasonNone           Reason = ""
	ReasonIdle           Reason = "idle"
	ReasonLifetime       Reason = "lifetime"
	ReasonRequested      Reason = "requested"
	ReasonExited         Reason = "exited"
	ReasonCrashed        Reason = "crashed"
	ReasonStartupTimeout Reason = "startup_timeout"
	ReasonLost           Reason = "lost"
	ReasonSpawnFailed    Reason = "spawn_failed"
)

// Backend is one running (or once running) instance of a user's program.
type Backend struct {
	ID           string      `json:"backend_id"`
	Key          string      `json:"key,omitempty"`
	User         string      `json:"user,omitempty"`
	State        State       `json:"state"`
	Reason       Reason      `json:"reason,omitempty"`
	ExitCode     *int        `json:"exit_code,omitempty"`
	FencingToken int64       `json:"fencing_token"`
	Runtime      string      `json:"runtime"`
	Spawn        SpawnConfig `json:"spawn"`
	// Secret authenticates the backend to Berth and lets it recognise
	// proxied requests. Never serialised to API clients.
	Secret string `json:"-"`
	// Handle is the runtime's opaque, persisted description of the running
	// instance, so a restarted Berth can recover it.
	Handle       []byte     `json:"-"`
	Node         string     `json:"node,omitempty"`
	Pool         string     `json:"pool,omitempty"` // the warm pool that started it, if one did; no Key until claimed (DESIGN.md, "Warm pools")
	CreatedAt    time.Time  `json:"created_at"`
	ReadyAt      *time.Time `json:"ready_at,omitempty"`
	TerminatedAt *time.Time `json:"terminated_at,omitempty"`
	LastActiveAt *time.Time `json:"last_active_at,omitempty"`
	// FrozenAt is set while the backend is frozen (spawn idle_action
	// "freeze"): a flag on a live state, not a state (see freeze.go).
	FrozenAt *time.Time `json:"frozen_at,omitempty"`
}

// Event is one state change of a backend, as kept in its history.
type Event struct {
	Seq       int64     `json:"seq"`
	BackendID string    `json:"backend_id"`
	State     State     `json:"state"`
	Reason    Reason    `json:"reason,omitempty"`
	ExitCode  *int      `json:"exit_code,omitempty"`
	Message   string    `json:"message,omitempty"`
	At        time.Time `json:"at"`
}

// Sentinel errors shared by every layer. Adapters translate their own errors
// into these.
var (
	ErrNotFound          = errors.New("not found")
	ErrInvalidTransition = errors.New("invalid state transition")
	ErrKeyHeld           = errors.New("key is held by a live backend")
	ErrConflict          = errors.New("conflict")
	// ErrLeaseExpired says a node's lease ran out (by the database's clock)
	// before it was renewed: other nodes may already hold its backends'
	// keys, so the node must treat every backend it runs as lost.
	ErrLeaseExpired = errors.New("node lease expired")
)

// FieldError is a validation error that names the offending field, so the API
// can say which part of a request to fix.
type FieldError struct {
	Field   string
	Message string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Message }

func fieldErr(field, format string, args ...any) *FieldError {
	return &FieldError{Field: field, Message: fmt.Sprintf(format, args...)}
}

// MaxKeyLen is the longest key allowed.
const MaxKeyLen = 128

// ReservedKeyPrefix starts the blob keys Berth keeps for itself beside the
// keys' states (the edge's certificates and ACME account, package edge).
// The control API refuses keys that start with it: a backend's state must
// never overwrite them, nor a state read return a private key.
const ReservedKeyPrefix = "@berth/"

// Reserved reports whether key is one of Berth's own (ReservedKeyPrefix).
func Reserved(key string) bool { return strings.HasPrefix(key, ReservedKeyPrefix) }

// ValidateKey checks a key against the alphabet [A-Za-z0-9._:/@-] and length 1–128.
func ValidateKey(key string) error {
	if key == "" {
		return errors.New("must be 1 to 128 characters")
	}
	// Characters first, counted as the caller wrote them: a key of 100
	// 'é' is wrong for its 'é', not for its 200 bytes.
	pos := 0
	for i, r := range key {
		if r < utf8.RuneSelf && keyByte(byte(r)) {
			pos++
			continue
		}
		if r == utf8.RuneError {
			if _, size := utf8.DecodeRuneInString(key[i:]); size == 1 {
				return fmt.Errorf("byte %#x at %d is not valid UTF-8; use A-Z a-z 0-9 . _ : / @ -", key[i], pos)
			}
		}
		return fmt.Errorf("character %q at %d is not allowed; use A-Z a-z 0-9 . _ : / @ -", r, pos)
	}
	if len(key) > MaxKeyLen {
		return fmt.Errorf("is %d characters; at most %d allowed", len(key), MaxKeyLen)
	}
	return nil
}

func keyByte(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("._:/@-", c) >= 0
}
