package store

import (
	"context"

	"github.com/berthhq/berth"
)

// Pools is what a store offers to keep warm pools (package server's
// pools). Both adapters implement it; storetest.RunPools is its
// conformance suite. It is a separate interface so that Store stays the
// contract every record needs, and a store without pools still serves
// everything else.
//
// A pooled backend is an ordinary backend record with Pool set and no
// key: CreateBackend records it (keyless, so it holds nothing) and
// Transition moves it as any other. ClaimBackend gives it a key later.
type Pools interface {
	// PutPool creates or replaces pool p.Name. CreatedAt is kept from an
	// existing row; both times are set on p as stored.
	PutPool(ctx context.Context, p *berth.Pool) error
	// Pool returns one pool, or berth.ErrNotFound.
	Pool(ctx context.Context, name string) (*berth.Pool, error)
	// Pools lists every pool, by name.
	Pools(ctx context.Context) ([]*berth.Pool, error)
	// DeletePool removes a pool's definition, or returns berth.ErrNotFound.
	// Its backends are not touched: they are records like any other.
	DeletePool(ctx context.Context, name string) error

	// ClaimBackend gives the live, unclaimed pooled backend id the key
	// key (and user), atomically as CreateBackend takes a key: when a live
	// backend already holds key, that holder is returned with
	// claimed=false and nothing is written; otherwise the backend gets
	// the key's next fencing token (larger than every earlier one), and an
	// event "claimed for key …" is appended in the same transaction. It
	// returns berth.ErrNotFound when there is no such backend and
	// berth.ErrInvalidTransition (wrapped) when it is not pooled, already
	// has a key, or is terminating or terminated; then no key is taken.
	ClaimBackend(ctx context.Context, id, key, user string) (holder *berth.Backend, claimed bool, err error)
}
