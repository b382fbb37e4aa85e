// Package store defines Berth's own records: backends, the keys they hold,
// fencing counters and event history. Adapters (sqlite, postgres) implement
// Store; storetest is the conformance suite every adapter passes.
//
// The lifecycle rule — states only move forward, and a key is held by at most
// one live backend — is enforced here, inside the store's transactions, not
// only in Berth's memory. The interface uses nothing SQLite-specific.
package store

import (
	"context"
	"time"

	"github.com/berthhq/berth"
)

// Store keeps Berth's records. All methods are safe for concurrent use.
// Times come back in UTC and are kept to at least the microsecond.
type Store interface {
	// CreateBackend records a new backend in state scheduled. If b.Key is set
	// it atomically takes the key: when a live backend already holds it, the
	// holder is returned with created=false and nothing is written; otherwise
	// b gets the key's next fencing token (larger than every earlier one),
	// is inserted, and created=true. b.ID, b.CreatedAt and b.Spawn must be set.
	// The scheduled event is appended in the same transaction.
	//
	// When created, the holder is b itself, with b.State, b.FencingToken and
	// b.CreatedAt set as stored. A keyless backend (b.Key == "") holds
	// nothing and is always created. An existing b.ID gives berth.ErrConflict
	// (wrapped) and takes no key.
	CreateBackend(ctx context.Context, b *berth.Backend) (holder *berth.Backend, created bool, err error)

	// Backend returns one backend, or berth.ErrNotFound.
	Backend(ctx context.Context, id string) (*berth.Backend, error)

	// Backends lists backends matching f, newest first (by CreatedAt, ties
	// broken by ID).
	Backends(ctx context.Context, f Filter) ([]*berth.Backend, error)

	// KeyHolder returns the live backend holding key, or berth.ErrNotFound.
	KeyHolder(ctx context.Context, key string) (*berth.Backend, error)

	// Transition moves a backend to t.To, appends the event, and — when t.To
	// is terminated — frees its key, all in one transaction. It returns
	// berth.ErrInvalidTransition (wrapped) if the backend's current state may
	// not move to t.To, and berth.ErrNotFound if there is no such backend.
	// When several callers race to the same state, exactly one succeeds.
	// It returns the backend as updated.
	Transition(ctx context.Context, id string, t Transition) (*berth.Backend, error)

	// SetHandle persists the runtime handle of a backend, or returns
	// berth.ErrNotFound.
	SetHandle(ctx context.Context, id string, handle []byte) error

	// SetLastActive records the last time a backend saw traffic, or returns
	// berth.ErrNotFound.
	SetLastActive(ctx context.Context, id string, at time.Time) error

	// Events returns a backend's history with Seq > after, oldest first.
	// Seq grows with each event of a backend, so a reader can resume after
	// the last Seq it saw. An unknown backend has no events (no error).
	Events(ctx context.Context, id string, after int64) ([]berth.Event, error)

	Close() error
}

// Transition is one forward move of a backend's state.
type Transition struct {
	To berth.State
	// Reason and ExitCode, when empty, keep the backend's earlier values, so
	// a reason given on the way to terminating survives into terminated.
	Reason   berth.Reason
	ExitCode *int
	Message  string
	// At is when it happened; zero means now. Moving to ready sets ReadyAt,
	// moving to terminated sets TerminatedAt.
	At time.Time
	// LastActive, when set, records the backend's last activity in the same
	// transaction (a stop writes it once, instead of in a write of its own).
	LastActive *time.Time
	// Handle, when not empty, records the backend's runtime handle in the
	// same transaction, as SetHandle would (a start records starting and
	// the handle in one write). A refused transition records no handle.
	Handle []byte
}

// Filter selects backends in Backends. Zero fields match everything.
type Filter struct {
	Key   string
	State berth.State
	// Live selects only backends that are not terminated.
	Live bool
	// Limit caps the number of results; 0 means no cap.
	Limit int
}
