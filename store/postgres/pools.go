package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/store"
)

var _ store.Pools = (*Store)(nil)

const poolColumns = `name, spawn, min_ready, max, schedule, created_at, updated_at`

// PutPool implements store.Pools.
func (s *Store) PutPool(ctx context.Context, p *berth.Pool) error {
	spawn, err := json.Marshal(p.Spawn)
	if err != nil {
		return fmt.Errorf("postgres: put pool %s: %w", p.Name, err)
	}
	schedule, err := json.Marshal(windows(p.Schedule))
	if err != nil {
		return fmt.Errorf("postgres: put pool %s: %w", p.Name, err)
	}
	now := micros(time.Now())
	var created time.Time
	err = s.pool.QueryRow(ctx, `INSERT INTO berth_pools AS p (name, spawn, min_ready, max, schedule, created_at, updated_at)
		VALUES ($1, $2, $3, $4, $5, $6, $6)
		ON CONFLICT (name) DO UPDATE SET spawn = EXCLUDED.spawn, min_ready = EXCLUDED.min_ready,
			max = EXCLUDED.max, schedule = EXCLUDED.schedule, updated_at = EXCLUDED.updated_at
		RETURNING created_at`, p.Name, spawn, p.MinReady, p.Max, schedule, now).Scan(&created)
	if err != nil {
		return fmt.Errorf("postgres: put pool %s: %w", p.Name, err)
	}
	p.CreatedAt, p.UpdatedAt = created.UTC(), now
	return nil
}

func scanPool(row pgx.Row) (*berth.Pool, error) {
	var (
		p               berth.Pool
		spawn, schedule []byte
	)
	err := row.Scan(&p.Name, &spawn, &p.MinReady, &p.Max, &schedule, &p.CreatedAt, &p.UpdatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
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
	p.CreatedAt, p.UpdatedAt = p.CreatedAt.UTC(), p.UpdatedAt.UTC()
	return &p, nil
}

// Pool implements store.Pools.
func (s *Store) Pool(ctx context.Context, name string) (*berth.Pool, error) {
	p, err := scanPool(s.pool.QueryRow(ctx, `SELECT `+poolColumns+` FROM berth_pools WHERE name = $1`, name))
	if err != nil {
		return nil, fmt.Errorf("postgres: pool %s: %w", name, err)
	}
	return p, nil
}

// Pools implements store.Pools.
func (s *Store) Pools(ctx context.Context) ([]*berth.Pool, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+poolColumns+` FROM berth_pools ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("postgres: pools: %w", err)
	}
	defer rows.Close()
	var ps []*berth.Pool
	for rows.Next() {
		p, err := scanPool(rows)
		if err != nil {
			return nil, fmt.Errorf("postgres: pools: %w", err)
		}
		ps = append(ps, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: pools: %w", err)
	}
	return ps, nil
}

// DeletePool implements store.Pools.
func (s *Store) DeletePool(ctx context.Context, name string) error {
	if err := s.update(ctx, `DELETE FROM berth_pools WHERE name = $1`, name); err != nil {
		return fmt.Errorf("postgres: delete pool %s: %w", name, err)
	}
	return nil
}

// ClaimBackend implements store.Pools. It locks the key's row before the
// backend's, as Transition does.
func (s *Store) ClaimBackend(ctx context.Context, id, key, user string) (*berth.Backend, bool, error) {
	var holder, b *berth.Backend
	err := s.tx(ctx, func(tx pgx.Tx) error {
		var token int64
		var err error
		if holder, err = s.takeKey(ctx, tx, &berth.Backend{ID: id, Key: key}, &token); err != nil {
			return err
		}
		if holder != nil {
			return errHeld
		}
		cur, err := scanBackend(tx.QueryRow(ctx, `SELECT `+backendColumns+` FROM berth_backends WHERE id = $1 FOR NO KEY UPDATE`, id))
		if err != nil {
			return err
		}
		if cur.Pool == "" || cur.Key != "" || cur.State.Rank() >= berth.StateTerminating.Rank() {
			return fmt.Errorf("%w: backend %s is %s, pool %q, key %q: not an unclaimed live pooled backend",
				berth.ErrInvalidTransition, id, cur.State, cur.Pool, cur.Key)
		}
		if b, err = scanBackend(tx.QueryRow(ctx, `UPDATE berth_backends SET key = $2, user_name = $3, fencing_token = $4
			WHERE id = $1 RETURNING `+backendColumns, id, key, user, token)); err != nil {
			return fmt.Errorf("update: %w", err)
		}
		msg := fmt.Sprintf("claimed from pool %s for key %s (fencing token %d)", b.Pool, key, token)
		if _, err := tx.Exec(ctx, insertEvent, id, b.State, "", nil, eventText(msg), micros(time.Now()), s.channel); err != nil {
			return fmt.Errorf("insert event: %w", err)
		}
		return nil
	})
	if errors.Is(err, errHeld) {
		return holder, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("postgres: claim backend %s for key %q: %w", id, key, err)
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
