package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/store"
)

// nodeColumns is the column order of scanNode, for a berth_nodes row
// named n; the last counts the node's live backends.
const nodeColumns = `n.id, n.proxy_addr, n.api_addr, n.runtimes, n.capacity, n.drained,
	n.started_at, n.heartbeat_at, n.lease_expires_at,
	(SELECT count(*) FROM berth_backends WHERE node = n.id AND state <> 'terminated')`

const (
	// lockKeysOf locks the key rows of backends $1, in key order.
	lockKeysOf = `SELECT key FROM berth_keys
		WHERE key IN (SELECT key FROM berth_backends WHERE id = ANY($1) AND key <> '')
		ORDER BY key FOR UPDATE`
	// lockExpired locks (shared, in id order) the nodes of backends $1
	// whose lease has expired. Waiting for a renewal re-checks the row as
	// renewed.
	lockExpired = `SELECT id FROM berth_nodes
		WHERE id IN (SELECT node FROM berth_backends WHERE id = ANY($1)) AND lease_expires_at <= clock_timestamp()
		ORDER BY id FOR SHARE`
	loseBackends = `UPDATE berth_backends SET state = 'terminated', state_rank = 5, reason = 'lost',
			terminated_at = clock_timestamp()
		WHERE id = ANY($1) AND node = ANY($2) AND state_rank < 5
		RETURNING ` + backendColumns
	releaseKeys = `UPDATE berth_keys SET holder = NULL WHERE key = ANY($1) AND holder = ANY($2)`
	// liveOf lists the live backends of node $1, or of every node whose
	// lease has expired when $1 is NULL.
	liveOf = `SELECT b.id FROM berth_backends b JOIN berth_nodes n ON n.id = b.node
		WHERE b.state <> 'terminated' AND (n.id = $1 OR $1 IS NULL AND n.lease_expires_at <= clock_timestamp())`
	// durationMicros turns a parameter of microseconds into an interval.
	durationMicros = ` * interval '1 microsecond'`
)

// RegisterNode implements store.Store.
func (s *Store) RegisterNode(ctx context.Context, n *store.Node, ttl time.Duration) (*store.Node, error) {
	if n.ID == "" || ttl <= 0 {
		return nil, fmt.Errorf("postgres: register node %q: need an id and a positive ttl (got %v)", n.ID, ttl)
	}
	runtimes := n.Runtimes
	if runtimes == nil {
		runtimes = []string{}
	}
	var got *store.Node
	err := s.tx(ctx, func(tx pgx.Tx) error {
		ids, err := ids(tx.Query(ctx, liveOf, n.ID))
		if err != nil {
			return fmt.Errorf("list backends: %w", err)
		}
		if _, err := tx.Exec(ctx, lockKeysOf, ids); err != nil {
			return fmt.Errorf("lock keys: %w", err)
		}
		// Held until commit, so the clock below is read after any judge of
		// the old lease has committed.
		if _, err := tx.Exec(ctx, `SELECT FROM berth_nodes WHERE id = $1 FOR NO KEY UPDATE`, n.ID); err != nil {
			return fmt.Errorf("lock node: %w", err)
		}
		// Only backends of an expired lease move: a node back within its
		// lease keeps its backends (it re-adopts them).
		if _, err := s.loseLocked(ctx, tx, ids); err != nil {
			return err
		}
		got, err = scanNode(tx.QueryRow(ctx, `WITH c AS (SELECT clock_timestamp() AS now)
			INSERT INTO berth_nodes AS n (id, proxy_addr, api_addr, runtimes, capacity, drained,
				started_at, heartbeat_at, lease_expires_at)
			SELECT $1, $2, $3, $4, $5, $6, c.now, c.now, c.now + $7`+durationMicros+` FROM c
			ON CONFLICT (id) DO UPDATE SET proxy_addr = EXCLUDED.proxy_addr, api_addr = EXCLUDED.api_addr,
				runtimes = EXCLUDED.runtimes, capacity = EXCLUDED.capacity, started_at = EXCLUDED.started_at,
				heartbeat_at = EXCLUDED.heartbeat_at, lease_expires_at = EXCLUDED.lease_expires_at
			RETURNING `+nodeColumns,
			n.ID, n.ProxyAddr, n.APIAddr, runtimes, n.Capacity, n.Drained, ttl.Microseconds()))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("postgres: register node %s: %w", n.ID, err)
	}
	return got, nil
}

// RenewLease implements store.Store.
func (s *Store) RenewLease(ctx context.Context, id string, ttl time.Duration) (*store.Node, error) {
	var got *store.Node
	err := s.tx(ctx, func(tx pgx.Tx) error {
		// Lock, then read the clock: a judge that found the lease expired
		// holds the row until it commits, and then the clock is past it.
		if _, err := tx.Exec(ctx, `SELECT FROM berth_nodes WHERE id = $1 FOR NO KEY UPDATE`, id); err != nil {
			return fmt.Errorf("lock node: %w", err)
		}
		var err error
		got, err = scanNode(tx.QueryRow(ctx, `WITH c AS (SELECT clock_timestamp() AS now)
			UPDATE berth_nodes AS n SET heartbeat_at = c.now, lease_expires_at = c.now + $2`+durationMicros+`
			FROM c WHERE n.id = $1 AND n.lease_expires_at > c.now
			RETURNING `+nodeColumns, id, ttl.Microseconds()))
		if errors.Is(err, berth.ErrNotFound) {
			return berth.ErrLeaseExpired
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("postgres: renew lease of node %s: %w", id, err)
	}
	return got, nil
}

// Nodes implements store.Store.
func (s *Store) Nodes(ctx context.Context) ([]*store.Node, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+nodeColumns+` FROM berth_nodes n ORDER BY n.id`)
	if err != nil {
		return nil, fmt.Errorf("postgres: nodes: %w", err)
	}
	defer rows.Close()
	var ns []*store.Node
	for rows.Next() {
		n, err := scanNode(rows)
		if err != nil {
			return nil, fmt.Errorf("postgres: nodes: %w", err)
		}
		ns = append(ns, n)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: nodes: %w", err)
	}
	return ns, nil
}

// SetDrained implements store.Store.
func (s *Store) SetDrained(ctx context.Context, id string, drained bool) error {
	if err := s.update(ctx, `UPDATE berth_nodes SET drained = $2 WHERE id = $1`, id, drained); err != nil {
		return fmt.Errorf("postgres: set drained %s: %w", id, err)
	}
	return nil
}

// ExpireNodes implements store.Store.
func (s *Store) ExpireNodes(ctx context.Context) ([]*berth.Backend, error) {
	var lost []*berth.Backend
	err := s.tx(ctx, func(tx pgx.Tx) error {
		ids, err := ids(tx.Query(ctx, liveOf, nil))
		if err != nil {
			return fmt.Errorf("list backends: %w", err)
		}
		lost, err = s.lose(ctx, tx, ids)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("postgres: expire nodes: %w", err)
	}
	return lost, nil
}

// lose moves those of backends ids that are live on a node whose lease
// has expired to terminated (lost), frees their keys and appends their
// events, inside tx. It returns the backends it moved.
func (s *Store) lose(ctx context.Context, tx pgx.Tx, ids []string) ([]*berth.Backend, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	if _, err := tx.Exec(ctx, lockKeysOf, ids); err != nil {
		return nil, fmt.Errorf("lock keys: %w", err)
	}
	return s.loseLocked(ctx, tx, ids)
}

// loseLocked is lose once tx holds the key rows of backends.
func (s *Store) loseLocked(ctx context.Context, tx pgx.Tx, backends []string) ([]*berth.Backend, error) {
	if len(backends) == 0 {
		return nil, nil
	}
	nodes, err := ids(tx.Query(ctx, lockExpired, backends))
	if err != nil {
		return nil, fmt.Errorf("lock expired nodes: %w", err)
	}
	if len(nodes) == 0 {
		return nil, nil
	}
	rows, err := tx.Query(ctx, loseBackends, backends, nodes)
	if err != nil {
		return nil, fmt.Errorf("mark lost: %w", err)
	}
	lost, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (*berth.Backend, error) { return scanBackend(r) })
	if err != nil {
		return nil, fmt.Errorf("mark lost: %w", err)
	}
	if len(lost) == 0 {
		return nil, nil
	}
	var (
		keys, moved []string
		batch       pgx.Batch
	)
	for _, b := range lost {
		moved = append(moved, b.ID)
		if b.Key != "" {
			keys = append(keys, b.Key)
		}
		batch.Queue(insertEvent, b.ID, berth.StateTerminated, berth.ReasonLost, nil,
			"node "+b.Node+" did not renew its lease", *b.TerminatedAt, s.channel)
	}
	if _, err := tx.Exec(ctx, releaseKeys, keys, moved); err != nil {
		return nil, fmt.Errorf("release keys: %w", err)
	}
	if err := tx.SendBatch(ctx, &batch).Close(); err != nil {
		return nil, fmt.Errorf("insert events: %w", err)
	}
	return lost, nil
}

// ids collects a query's one text column.
func ids(rows pgx.Rows, err error) ([]string, error) {
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// scanNode reads one row of nodeColumns; pgx.ErrNoRows becomes
// berth.ErrNotFound.
func scanNode(row pgx.Row) (*store.Node, error) {
	var n store.Node
	err := row.Scan(&n.ID, &n.ProxyAddr, &n.APIAddr, &n.Runtimes, &n.Capacity, &n.Drained,
		&n.StartedAt, &n.HeartbeatAt, &n.LeaseExpiresAt, &n.Live)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, berth.ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	if len(n.Runtimes) == 0 {
		n.Runtimes = nil
	}
	n.StartedAt, n.HeartbeatAt, n.LeaseExpiresAt = n.StartedAt.UTC(), n.HeartbeatAt.UTC(), n.LeaseExpiresAt.UTC()
	return &n, nil
}
