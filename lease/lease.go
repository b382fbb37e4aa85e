// Package lease holds the timing of a Berth replica's lease on its
// backends' keys, and the arithmetic a node uses to stop its backends in
// time when it cannot renew. The lease itself lives in the store, judged
// by the database's clock; this package reads no clock and keeps no state,
// so it must never be used to decide whether another node's lease expired:
// only the store does that.
package lease

import (
	"errors"
	"time"
)

// The defaults (see docs/DESIGN.md, "Replicas: nodes and leases").
const (
	// RenewInterval is how often a node renews its lease.
	RenewInterval = 2 * time.Second
	// TTL is the lease each renewal grants, from the database's now.
	TTL = 15 * time.Second
	// StopBefore is how long before the lease could expire a node that
	// has not renewed begins stopping its backends gracefully.
	StopBefore = 6 * time.Second
	// KillBefore is how long before the lease could expire it kills
	// whatever is still running, leaving the kill this long to finish.
	KillBefore = 3 * time.Second
)

// Timing is one choice of the four durations; Default is the constants'.
type Timing struct {
	RenewInterval, TTL, StopBefore, KillBefore time.Duration
}

// Default is the timing Berth runs with.
var Default = Timing{RenewInterval: RenewInterval, TTL: TTL, StopBefore: StopBefore, KillBefore: KillBefore}

// Validate checks the order the safety argument needs: a kill that starts
// and ends before the lease, after a graceful stop, after at least one
// renewal that could have kept the lease.
func (t Timing) Validate() error {
	switch {
	case t.RenewInterval <= 0 || t.KillBefore <= 0:
		return errors.New("lease: renew interval and kill margin must be positive")
	case t.KillBefore >= t.StopBefore:
		return errors.New("lease: the kill must come after the graceful stop begins (KillBefore < StopBefore)")
	case t.StopBefore >= t.TTL-t.RenewInterval:
		return errors.New("lease: a renewal must fit before the graceful stop (StopBefore < TTL - RenewInterval)")
	}
	return nil
}

// Deadlines says when a node that has not renewed since must begin
// stopping its backends gracefully, and when it must kill what still runs.
// sent is the node's own monotonic time (time.Now(), never a time parsed
// or from the database) taken just BEFORE it sent its last renewal that
// succeeded: the database set that lease's expiry from its clock when the
// request arrived, later than sent, so sent + TTL is never later than the
// expiry, measured the node's way.
func (t Timing) Deadlines(sent time.Time) (stop, kill time.Time) {
	expiry := sent.Add(t.TTL)
	return expiry.Add(-t.StopBefore), expiry.Add(-t.KillBefore)
}

// Scaled is Default's schedule for a lease of ttl: every margin in the same
// proportion to it (a shorter lease for tests, a longer one for a store far
// away). Zero gives Default.
func Scaled(ttl time.Duration) Timing {
	if ttl <= 0 || ttl == TTL {
		return Default
	}
	scale := func(d time.Duration) time.Duration { return time.Duration(float64(d) * float64(ttl) / float64(TTL)) }
	return Timing{RenewInterval: scale(RenewInterval), TTL: ttl, StopBefore: scale(StopBefore), KillBefore: scale(KillBefore)}
}
