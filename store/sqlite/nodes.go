package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/store"
)

// Nodes here share one host, so "the database's clock" is this host's,
// read inside the write transaction: every write runs on the one
// connection, in turn, so each judge of a lease reads the clock after the
// write before it committed.

// nodeColumns is the column order of scanNode; the last counts the node's
// live backends.
const nodeColumns = `id, proxy_addr, api_addr, runtimes, capacity, drained,
	started_at, heartbeat_at, lease_expires_at,
	(SELECT count(*) FROM backends WHERE node = nodes.id AND state <> 'terminated')`

// RegisterNode implements store.Store.
func (s *Store) RegisterNode(ctx context.Context, n *store.Node, ttl time.Duration) (*store.Node, error) {
	if n.ID == "" || ttl <= 0 {
		return nil, fmt.Errorf("sqlite: register node %q: need an id and a positive ttl (got %v)", n.ID, ttl)
	}
	runtimes, err := json.Marshal(n.Runtimes)
	if err != nil {
		return nil, fmt.Errorf("sqlite: register node %s: %w", n.ID, err)
	}
	if len(n.Runtimes) == 0 {
		runtimes = []byte("[]")
	}
	var (
		got     *store.Node
		changes []store.Change
	)
	err = s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		now := time.Now()
		var err error
		// Only backends of an expired lease match: a node back within its
		// lease keeps its backends (it re-adopts them).
		if _, changes, err = s.loseExpiredTx(ctx, tx, n.ID, now); err != nil {
			return err
		}
		got, err = scanNode(tx.QueryRowContext(ctx, `INSERT INTO nodes (id, proxy_addr, api_addr, runtimes, capacity,
				drained, started_at, heartbeat_at, lease_expires_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (id) DO UPDATE SET proxy_addr = excluded.proxy_addr, api_addr = excluded.api_addr,
				runtimes = excluded.runtimes, capacity = excluded.capacity, started_at = excluded.started_at,
				heartbeat_at = excluded.heartbeat_at, lease_expires_at = excluded.lease_expires_at
			RETURNING `+nodeColumns,
			n.ID, n.ProxyAddr, n.APIAddr, string(runtimes), n.Capacity, n.Drained,
			now.UnixMicro(), now.UnixMicro(), now.Add(ttl).UnixMicro()))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("sqlite: register node %s: %w", n.ID, err)
	}
	s.feed.Publish(changes...)
	return got, nil
}

// RenewLease implements store.Store.
func (s *Store) RenewLease(ctx context.Context, id string, ttl time.Duration) (*store.Node, error) {
	var got *store.Node
	err := s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		now := time.Now()
		var err error
		got, err = scanNode(tx.QueryRowContext(ctx, `UPDATE nodes SET heartbeat_at = ?, lease_expires_at = ?
			WHERE id = ? AND lease_expires_at > ? RETURNING `+nodeColumns,
			now.UnixMicro(), now.Add(ttl).UnixMicro(), id, now.UnixMicro()))
		if errors.Is(err, berth.ErrNotFound) {
			return berth.ErrLeaseExpired
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("sqlite: renew lease of node %s: %w", id, err)
	}
	return got, nil
}

// Nodes implements store.Store.
func (s *Store) Nodes(ctx context.Context) ([]*store.Node, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+nodeColumns+` FROM nodes ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("sqlite: nodes: %w", err)
	}
	defer rows.Close()
	var ns []*store.Node
	for rows.Next() {
		n, err := scanNode(rows)
		if err != nil {
			return nil, fmt.Errorf("sqlite: nodes: %w", err)
		}
		ns = append(ns, n)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: nodes: %w", err)
	}
	return ns, nil
}

// SetDrained implements store.Store.
func (s *Store) SetDrained(ctx context.Context, id string, drained bool) error {
	if err := s.update(ctx, `UPDATE nodes SET drained = ? WHERE id = ?`, drained, id); err != nil {
		return fmt.Errorf("sqlite: set drained %s: %w", id, err)
	}
	return nil
}

// ExpireNodes implements store.Store.
func (s *Store) ExpireNodes(ctx context.Context) ([]*berth.Backend, error) {
	var (
		lost    []*berth.Backend
		changes []store.Change
	)
	err := s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		var err error
		lost, changes, err = s.loseExpiredTx(ctx, tx, "", time.Now())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("sqlite: expire nodes: %w", err)
	}
	s.feed.Publish(changes...)
	return lost, nil
}

// loseExpiredTx moves to terminated (lost), inside tx, every live backend
// of node (of every node, when node is "") whose lease expired by now.
func (s *Store) loseExpiredTx(ctx context.Context, tx *sql.Tx, node string, now time.Time) ([]*berth.Backend, []store.Change, error) {
	rows, err := tx.QueryContext(ctx, `SELECT `+backendColumns+` FROM backends
		WHERE state <> 'terminated' AND node IN
			(SELECT id FROM nodes WHERE lease_expires_at <= ? AND (? = '' OR id = ?))
		ORDER BY created_at, id`, now.UnixMicro(), node, node)
	if err != nil {
		return nil, nil, err
	}
	var expired []*berth.Backend
	for rows.Next() {
		b, err := scanBackend(rows)
		if err != nil {
			rows.Close()
			return nil, nil, err
		}
		expired = append(expired, b)
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return nil, nil, err
	}
	var (
		lost    []*berth.Backend
		changes []store.Change
	)
	for _, b := range expired {
		b, c, err := s.loseTx(ctx, tx, b, now)
		if err != nil {
			return nil, nil, err
		}
		lost, changes = append(lost, b), append(changes, c)
	}
	return lost, changes, nil
}

// Watch implements store.Store: the changes of this Store's own writes,
// published once committed. (One SQLite file serves one Berth.)
func (s *Store) Watch(ctx context.Context) (<-chan store.Change, error) {
	return s.feed.Watch(ctx), nil
}

// scanNode reads one row of nodeColumns; sql.ErrNoRows becomes
// berth.ErrNotFound.
func scanNode(row interface{ Scan(...any) error }) (*store.Node, error) {
	var (
		n                           store.Node
		runtimes                    []byte
		started, heartbeat, expires int64
	)
	err := row.Scan(&n.ID, &n.ProxyAddr, &n.APIAddr, &runtimes, &n.Capacity, &n.Drained,
		&started, &heartbeat, &expires, &n.Live)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, berth.ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(runtimes, &n.Runtimes); err != nil {
		return nil, fmt.Errorf("decode runtimes of node %s: %w", n.ID, err)
	}
	if len(n.Runtimes) == 0 {
		n.Runtimes = nil
	}
	n.StartedAt, n.HeartbeatAt, n.LeaseExpiresAt = fromMicros(started), fromMicros(heartbeat), fromMicros(expires)
	return &n, nil
}
