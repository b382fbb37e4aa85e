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

	// RegisterNode records node n (a Berth replica) or updates its row, and
	// gives it a lease of ttl: heartbeat = the database's now, lease expiry
	// = now + ttl, StartedAt = now. An existing row keeps its Drained. When
	// the node's earlier lease had expired, its backends that are still
	// live are moved to terminated (lost) first, in the same transaction: a
	// node that comes back never resurrects records whose keys others may
	// already hold. It returns the node as stored.
	RegisterNode(ctx context.Context, n *Node, ttl time.Duration) (*Node, error)

	// RenewLease extends a node's lease to the database's now + ttl, only
	// if it has not expired by the database's clock. Otherwise — or when
	// there is no such node — it returns berth.ErrLeaseExpired (wrapped):
	// the node must treat all its backends as lost, stop them, and
	// register again.
	RenewLease(ctx context.Context, id string, ttl time.Duration) (*Node, error)

	// Nodes lists every registered node, by ID.
	Nodes(ctx context.Context) ([]*Node, error)

	// SetDrained marks a node drained (no new backends) or not, or returns
	// berth.ErrNotFound.
	SetDrained(ctx context.Context, id string, drained bool) error

	// ExpireNodes moves every live backend of a node whose lease has
	// expired (by the database's clock) to terminated (reason lost), frees
	// its key and appends its event, in one transaction, and returns the
	// backends it moved, as updated. Stores shared by several replicas may
	// call it at once: each backend is moved by exactly one call.
	// Backends of a node that has no row (one Berth, no replicas) are never
	// touched.
	ExpireNodes(ctx context.Context) ([]*berth.Backend, error)

	// Watch returns a feed of the changes every appended event makes (in
	// this process or, for a shared store, in any replica), until ctx ends
	// or the store closes, when the channel is closed. Changes are hints to
	// re-read: a reader that falls behind, or that the store could not
	// keep informed (a lost connection), gets a Change with Resync set
	// instead of what it missed, and must re-scan. A slow reader never
	// slows a writer. Changes of different backends may arrive out of Seq
	// order.
	Watch(ctx context.Context) (<-chan Change, error)

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
	// Node selects the backends placed on one node.
	Node string
	// Live selects only backends that are not terminated.
	Live bool
	// Limit caps the number of results; 0 means no cap.
	Limit int
}

// Node is one Berth replica as recorded in a shared store. Its times come
// from the database's clock, never from the node's: wall clocks are not
// compared across machines.
type Node struct {
	ID string
	// ProxyAddr is the host:port other replicas' proxies forward to for
	// this node's backends; APIAddr its backend API.
	ProxyAddr string
	APIAddr   string
	// Runtimes names the runtimes the node can start backends with.
	Runtimes []string
	// Capacity caps the node's live backends; 0 means no cap.
	Capacity int
	// Drained nodes get no new backends; their running ones run out.
	Drained        bool
	StartedAt      time.Time
	HeartbeatAt    time.Time
	LeaseExpiresAt time.Time
	// Live counts the node's live backends, as of the read.
	Live int
}

// Change names one appended event, as Watch delivers it.
type Change struct {
	Seq       int64
	BackendID string
	Key       string
	Node      string
	State     berth.State
	// Resync says changes may have been missed (the reader fell behind or
	// the store lost its feed): re-read what you follow. The other fields
	// are then zero.
	Resync bool
}
