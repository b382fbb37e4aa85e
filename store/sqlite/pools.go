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

var _ store.Pools = (*Store)(nil)

// PutPool implements store.Pools.
func (s *Store) PutPool(ctx context.Context, p *berth.Pool) error {
	spawn, err := json.Marshal(p.Spawn)
	if err != nil {
		return fmt.Errorf("sqlite: put pool %s: %w", p.Name, err)
	}
	schedule, err := json.Marshal(windows(p.Schedule))
	if err != nil {
		return fmt.Errorf("sqlite: put pool %s: %w", p.Name, err)
	}
	now := time.Now().UTC().Truncate(time.Microsecond)
	var created int64
	err = s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, `INSERT INTO pools (name, spawn, min_ready, max, schedule, created_at, updated_at)
			VALUES (?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (name) DO UPDATE SET spawn = excluded.spawn, min_ready = excluded.min_ready,
				max = excluded.max, schedule = excluded.schedule, updated_at = excluded.updated_at
			RETURNING created_at`,
			p.Name, string(spawn), p.MinReady, p.Max, string(schedule), now.UnixMicro(), now.UnixMicro()).Scan(&created)
	})
	if err != nil {
		return fmt.Errorf("sqlite: put pool %s: %w", p.Name, err)
	}
	p.CreatedAt, p.UpdatedAt = fromMicros(created), now
	return nil
}

const poolColumns = `name, spawn, min_ready, max, schedule, created_at, updated_at`

func scanPool(row interface{ Scan(...any) error }) (*berth.Pool, error) {
	var (
		p                berth.Pool
		spawn, schedule  []byte
		created, updated int64
	)
	err := row.Scan(&p.Name, &spawn, &p.MinReady, &p.Max, &schedule, &created, &updated)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, berth.ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(spawn, &p.Spawn); err != nil {
		return nil, fmt.Errorf("decode spawn config of pool %s: %w", p.Name, err)
	}
	if err := json.Unmarshal(schedule, &p.Schedule); err != nil {
		return nil, fmt.Errorf("decode schedule of pool %s: %w", p.Name, err)
	}
	if len(p.Schedule) == 0 {
		p.Schedule = nil
	}
	p.CreatedAt, p.UpdatedAt = fromMicros(created), fromMicros(updated)
	return &p, nil
}

// Pool implements store.Pools.
func (s *Store) Pool(ctx context.Context, name string) (*berth.Pool, error) {
	p, err := scanPool(s.r.QueryRowContext(ctx, `SELECT `+poolColumns+` FROM pools WHERE name = ?`, name))
	if err != nil {
		return nil, fmt.Errorf("sqlite: pool %s: %w", name, err)
	}
	return p, nil
}

// Pools implements store.Pools.
func (s *Store) Pools(ctx context.Context) ([]*berth.Pool, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+poolColumns+` FROM pools ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("sqlite: pools: %w", err)
	}
	defer rows.Close()
	var ps []*berth.Pool
	for rows.Next() {
		p, err := scanPool(rows)
		if err != nil {
			return nil, fmt.Errorf("sqlite: pools: %w", err)
		}
		ps = append(ps, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: pools: %w", err)
	}
	return ps, nil
}

// DeletePool implements store.Pools.
func (s *Store) DeletePool(ctx context.Context, name string) error {
	if err := s.update(ctx, `DELETE FROM pools WHERE name = ?`, name); err != nil {
		return fmt.Errorf("sqlite: delete pool %s: %w", name, err)
	}
	return nil
}

// ClaimBackend implements store.Pools.
func (s *Store) ClaimBackend(ctx context.Context, id, key, user string) (*berth.Backend, bool, error) {
	var (
		holder, b *berth.Backend
		changes   []store.Change
	)
	err := s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		holder, b, changes = nil, nil, nil
		cur, err := scanBackend(tx.StmtContext(ctx, s.backendInTx).QueryRowContext(ctx, id))
		if err != nil {
			return err
		}
		if cur.Pool == "" || cur.Key != "" || cur.State.Rank() >= berth.StateTerminating.Rank() {
			return fmt.Errorf("%w: backend %s is %s, pool %q, key %q: not an unclaimed live pooled backend",
				berth.ErrInvalidTransition, id, cur.State, cur.Pool, cur.Key)
		}
		var token int64
		if holder, changes, err = s.takeKeyTx(ctx, tx, &berth.Backend{ID: id, Key: key}, &token); err != nil {
			return err
		}
		if holder != nil {
			return nil // as CreateBackend: a lost holder's end is kept
		}
		// The row read above is the row written here (one writer, in one
		// transaction): it is not read back.
		if _, err := tx.StmtContext(ctx, s.claimKey).ExecContext(ctx, key, user, token, id); err != nil {
			return fmt.Errorf("update: %w", err)
		}
		b = cur
		b.Key, b.User, b.FencingToken = key, user, token
		res, err := tx.StmtContext(ctx, s.insertEvent).ExecContext(ctx,
			id, b.State, "", nil, fmt.Sprintf("claimed from pool %s for key %s (fencing token %d)", b.Pool, key, token),
			time.Now().UnixMicro())
		if err != nil {
			return fmt.Errorf("insert event: %w", err)
		}
		c, err := change(res, b, b.State)
		changes = append(changes, c)
		return err
	})
	if err != nil {
		return nil, false, fmt.Errorf("sqlite: claim backend %s for key %q: %w", id, key, err)
	}
	s.feed.Publish(changes...)
	if holder != nil {
		return holder, false, nil
	}
	return b, true, nil
}

// windows is a schedule as stored: never null.
func windows(ws []berth.PoolWindow) []berth.PoolWindow {
	if ws == nil {
		return []berth.PoolWindow{}
	}
	return ws
}
