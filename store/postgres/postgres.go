// Package postgres implements store.Store on PostgreSQL (URL postgres://…
// or postgresql://…), the store for Berth replicas that share one
// database. Its tables are prefixed berth_ (berth_backends, berth_keys,
// berth_events, berth_schema_version) and created or migrated by Open.
//
// The lifecycle rules are decided by the database, never by this process's
// memory: a key is taken by one INSERT … ON CONFLICT on its berth_keys row,
// which also draws the next fencing token; a state moves only by an UPDATE
// whose WHERE compares ranks; a terminated backend frees its key in the same
// transaction. So replicas that share the database agree without talking
// to each other. This package must never cache a record, a key's holder or
// a fencing token across calls, never hold a transaction open across
// anything but its own statements, and never open more connections than
// its pool bound (default 8; pool_max_conns=N in the URL), plus one
// listening connection once Watch is called, so Berth cannot exhaust the
// database's connection limit.
//
// Transactions run at READ COMMITTED whatever the server's default: the
// statements rely on its row locks and re-checks, not on serialisation
// failures, and so never need retrying. Transactions that lock several
// kinds of row lock them in one order — keys (by key), then nodes (by
// id), then backends — so they never deadlock.
//
// Leases are judged by the database's clock_timestamp() alone. A judge
// that finds a lease expired holds the node's row (FOR SHARE) until it
// commits, and RenewLease reads the clock only once it holds the row, so
// a renewal either commits before the judgement (which then sees the new
// expiry) or finds the lease expired.
//
// Every appended event is announced with pg_notify in its own transaction
// (so at commit) on the channel berth_changes_<oid of the schema>, one
// channel per schema, so Berths in different schemas of one database do
// not hear each other. Watch needs a session-level LISTEN: behind a
// transaction-pooling proxy it hears nothing, only Resyncs.
package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/store"
)

var _ store.Store = (*Store)(nil)

// defaultMaxConns bounds the pool when the URL does not: a spawn is five
// short transactions and the control API's reads share the pool, yet with
// the blob store's four this stays at a dozen connections per replica.
const defaultMaxConns = 8

// Store is a store.Store kept in PostgreSQL. Create it with Open.
type Store struct {
	pool    *pgxpool.Pool
	channel string // of the change notifications

	feed     store.Feed
	listen   sync.Once
	ready    chan struct{} // closed when first listening
	stop     context.CancelFunc
	stopped  chan struct{} // closed when the listener has returned
	listenWG sync.WaitGroup
}

// Open connects to the database rawURL names (a URL or keyword/value
// string, as pgx reads it), then creates or migrates the schema in the
// first schema of the connection's search_path. It refuses a schema newer
// than this build. pool_max_conns in rawURL bounds the pool (default 8);
// behind a transaction-pooling proxy, add default_query_exec_mode=exec.
func Open(ctx context.Context, rawURL string) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(rawURL)
	if err != nil {
		// pgx's parse errors hide the password.
		return nil, fmt.Errorf("postgres: open: %w", err)
	}
	if !strings.Contains(rawURL, "pool_max_conns") {
		cfg.MaxConns = defaultMaxConns
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: open: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: connect: %w", err)
	}
	s := &Store{pool: pool, ready: make(chan struct{}), stopped: make(chan struct{})}
	if err := s.tx(ctx, func(tx pgx.Tx) error { return migrate(ctx, tx) }); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: migrate: %w", err)
	}
	err = pool.QueryRow(ctx, `SELECT 'berth_changes_' || oid FROM pg_namespace WHERE nspname = current_schema()`).Scan(&s.channel)
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: open: name the change channel: %w", err)
	}
	return s, nil
}

// MaxConns reports the pool's bound.
func (s *Store) MaxConns() int32 { return s.pool.Config().MaxConns }

// Close stops the change listener, ends every Watch and closes the pool,
// waiting for connections in use to be released.
func (s *Store) Close() error {
	s.listen.Do(func() { close(s.stopped) }) // no listener will start
	if s.stop != nil {
		s.stop()
	}
	s.listenWG.Wait()
	s.feed.Close()
	s.pool.Close()
	return nil
}

// tx runs fn in a READ COMMITTED transaction, committed when fn returns nil.
func (s *Store) tx(ctx context.Context, fn func(pgx.Tx) error) error {
	return pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.ReadCommitted}, fn)
}

// backendColumns is the column order of scanBackend and the insert.
const backendColumns = `id, key, user_name, state, state_rank, reason, exit_code, fencing_token,
	runtime, spawn, secret, handle, node, created_at, ready_at, terminated_at, last_active_at, pool`

const (
	// takeKey takes a free key, or takes nothing (no row) while a backend
	// holds it. Either way the key's row stays locked until the
	// transaction ends, so the holder read next cannot change meanwhile,
	// and a concurrent taker of a new key waits for this insert to commit
	// and then finds it held. The first holder of a key gets token 1.
	takeKey = `INSERT INTO berth_keys AS k (key, fencing, holder) VALUES ($1, 1, $2)
		ON CONFLICT (key) DO UPDATE SET fencing = k.fencing + 1, holder = EXCLUDED.holder
		WHERE k.holder IS NULL
		RETURNING fencing`
	holderOf = `SELECT ` + backendColumns + ` FROM berth_backends
		WHERE id = (SELECT holder FROM berth_keys WHERE key = $1)`
	// holderExpired is holderOf with whether the holder's node's lease
	// has expired (NULL for a node with no row: one Berth, no lease).
	holderExpired = `SELECT ` + backendColumns + `,
			(SELECT lease_expires_at <= clock_timestamp() FROM berth_nodes WHERE id = berth_backends.node)
		FROM berth_backends WHERE id = (SELECT holder FROM berth_keys WHERE key = $1)`
	insertBackend = `INSERT INTO berth_backends (` + backendColumns + `)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)`
	// insertEvent appends an event and announces it to every listener
	// (at commit); it returns the event's seq and the void of pg_notify.
	insertEvent = `WITH e AS (INSERT INTO berth_events (backend_id, state, reason, exit_code, message, at)
			VALUES ($1, $2, $3, $4, $5, $6) RETURNING seq, backend_id, state)
		SELECT e.seq, pg_notify($7` + announce

	// transition moves forward only, in the statement itself: a racing or
	// stale caller waits for the row lock, re-checks the rank against the
	// row as the winner left it, and matches nothing. NULL arguments leave
	// a column as it was.
	transition = `UPDATE berth_backends SET state = $2, state_rank = $3,
			reason = COALESCE($4, reason), exit_code = COALESCE($5, exit_code),
			ready_at = COALESCE($6, ready_at), terminated_at = COALESCE($7, terminated_at),
			handle = COALESCE($8, handle), last_active_at = COALESCE($9, last_active_at)
		WHERE id = $1 AND state_rank < $3
		RETURNING ` + backendColumns
	// releaseKey frees backend $1's key. Transition runs it before it
	// moves the backend, so it locks the key's row before the backend's.
	releaseKey = `UPDATE berth_keys SET holder = NULL
		WHERE key = (SELECT key FROM berth_backends WHERE id = $1) AND holder = $1`
)

// announce ends a statement whose CTE e inserted events and whose select
// list ends in "pg_notify(CHANNEL": it tells every listener (at commit)
// what changed, as a notification's payload reads.
const announce = `, json_build_object('seq', e.seq, 'id', e.backend_id, 'key', b.key, 'node', b.node,
		'state', e.state)::text) FROM e JOIN berth_backends b ON b.id = e.backend_id`

// CreateBackend implements store.Store. On success it sets b.State,
// b.FencingToken and b.CreatedAt (to UTC, in microseconds, as stored) and
// returns b itself as the holder.
func (s *Store) CreateBackend(ctx context.Context, b *berth.Backend) (*berth.Backend, bool, error) {
	holder, created, err := s.createBackend(ctx, b)
	if err != nil {
		return nil, false, fmt.Errorf("postgres: create backend %s: %w", b.ID, err)
	}
	return holder, created, nil
}

// errHeld ends a CreateBackend transaction that found the key held: it
// wrote nothing, so it rolls back.
var errHeld = errors.New("key held")

func (s *Store) createBackend(ctx context.Context, b *berth.Backend) (*berth.Backend, bool, error) {
	if b.ID == "" {
		return nil, false, errors.New("backend has no id")
	}
	spawn, err := json.Marshal(b.Spawn)
	if err != nil {
		return nil, false, err
	}
	created := b.CreatedAt
	if created.IsZero() {
		created = time.Now()
	}
	created = micros(created)

	var (
		holder *berth.Backend // set when another backend holds the key
		token  int64
	)
	err = s.tx(ctx, func(tx pgx.Tx) error {
		// A keyless backend holds nothing and fences against nobody.
		token = 1
		if b.Key != "" {
			var err error
			if holder, err = s.takeKey(ctx, tx, b, &token); err != nil {
				return err
			}
			if holder != nil {
				return errHeld
			}
		}
		_, err := tx.Exec(ctx, insertBackend,
			b.ID, b.Key, b.User, berth.StateScheduled, berth.StateScheduled.Rank(),
			b.Reason, b.ExitCode, token, b.Runtime, spawn, b.Secret, nullBytes(b.Handle), b.Node,
			created, nullTime(b.ReadyAt), nullTime(b.TerminatedAt), nullTime(b.LastActiveAt), b.Pool)
		if err != nil {
			if isUniqueViolation(err, "berth_backends_pkey") {
				err = berth.ErrConflict
			}
			return fmt.Errorf("insert: %w", err)
		}
		if _, err := tx.Exec(ctx, insertEvent, b.ID, berth.StateScheduled, "", nil, "", created, s.channel); err != nil {
			return fmt.Errorf("insert event: %w", err)
		}
		return nil
	})
	if errors.Is(err, errHeld) {
		return holder, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	b.State, b.FencingToken, b.CreatedAt = berth.StateScheduled, token, created
	return b, true, nil
}

// takeKey takes b's key inside tx and sets *token to its fencing token, or
// returns the live holder. A holder whose node's lease has expired is moved
// to terminated (lost) first, and the key is taken from it. The key's row
// stays locked either way, so the holder cannot change meanwhile.
func (s *Store) takeKey(ctx context.Context, tx pgx.Tx, b *berth.Backend, token *int64) (*berth.Backend, error) {
	for took := false; ; took = true {
		err := tx.QueryRow(ctx, takeKey, b.Key, b.ID).Scan(token)
		if err == nil {
			return nil, nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return nil, fmt.Errorf("take key %q: %w", b.Key, err)
		}
		var expired *bool
		holder, err := scanBackend(tx.QueryRow(ctx, holderExpired, b.Key), &expired)
		if err != nil {
			return nil, fmt.Errorf("read holder of %q: %w", b.Key, err)
		}
		if expired == nil || !*expired || took {
			return holder, nil
		}
		lost, err := s.lose(ctx, tx, []string{holder.ID})
		if err != nil {
			return nil, err
		}
		if len(lost) == 0 {
			return holder, nil // renewed in time
		}
	}
}

// Backend implements store.Store.
func (s *Store) Backend(ctx context.Context, id string) (*berth.Backend, error) {
	b, err := scanBackend(s.pool.QueryRow(ctx, `SELECT `+backendColumns+` FROM berth_backends WHERE id = $1`, id))
	if err != nil {
		return nil, fmt.Errorf("postgres: backend %s: %w", id, err)
	}
	return b, nil
}

// KeyHolder implements store.Store.
func (s *Store) KeyHolder(ctx context.Context, key string) (*berth.Backend, error) {
	b, err := scanBackend(s.pool.QueryRow(ctx, holderOf+` AND state <> 'terminated'`, key))
	if err != nil {
		return nil, fmt.Errorf("postgres: key holder %q: %w", key, err)
	}
	return b, nil
}

// Backends implements store.Store.
func (s *Store) Backends(ctx context.Context, f store.Filter) ([]*berth.Backend, error) {
	var (
		where []string
		args  []any
	)
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	if f.Key != "" {
		where = append(where, "key = "+arg(f.Key))
	}
	if f.State != "" {
		where = append(where, "state = "+arg(f.State))
	}
	if f.Node != "" {
		where = append(where, "node = "+arg(f.Node))
	}
	// Said again for a live state, so a node's live backends are found by
	// the partial index berth_backends_node_live, not among its history.
	if f.Live || f.State.Live() {
		where = append(where, "state <> 'terminated'")
	}
	q := "SELECT " + backendColumns + " FROM berth_backends"
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	// id breaks ties so equal timestamps still list in a stable order.
	q += " ORDER BY created_at DESC, id DESC"
	if f.Limit > 0 {
		q += " LIMIT " + arg(f.Limit)
	}

	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("postgres: list backends: %w", err)
	}
	defer rows.Close()
	var bs []*berth.Backend
	for rows.Next() {
		b, err := scanBackend(rows)
		if err != nil {
			return nil, fmt.Errorf("postgres: list backends: %w", err)
		}
		bs = append(bs, b)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: list backends: %w", err)
	}
	return bs, nil
}

// Transition implements store.Store. A zero t.At means now; an empty
// t.Reason or nil t.ExitCode keeps the backend's earlier value, so a reason
// given when terminating survives into terminated.
func (s *Store) Transition(ctx context.Context, id string, t store.Transition) (*berth.Backend, error) {
	b, err := s.doTransition(ctx, id, t)
	if err != nil {
		return nil, fmt.Errorf("postgres: transition %s to %s: %w", id, t.To, err)
	}
	return b, nil
}

func (s *Store) doTransition(ctx context.Context, id string, t store.Transition) (*berth.Backend, error) {
	if !t.To.Valid() {
		return nil, fmt.Errorf("unknown state: %w", berth.ErrInvalidTransition)
	}
	at := t.At
	if at.IsZero() {
		at = time.Now()
	}
	at = micros(at)
	var readyAt, terminatedAt *time.Time
	switch t.To {
	case berth.StateReady:
		readyAt = &at
	case berth.StateTerminated:
		terminatedAt = &at
	}
	var reason *berth.Reason
	if t.Reason != "" {
		reason = &t.Reason
	}

	var b *berth.Backend
	err := s.tx(ctx, func(tx pgx.Tx) error {
		// The key first: rows are locked keys before backends. Should the
		// move below be refused, the transaction and this with it roll
		// back.
		var released int64
		if t.To == berth.StateTerminated {
			tag, err := tx.Exec(ctx, releaseKey, id)
			if err != nil {
				return fmt.Errorf("release key: %w", err)
			}
			released = tag.RowsAffected()
		}
		for moved := false; !moved; {
			var err error
			b, err = scanBackend(tx.QueryRow(ctx, transition, id, t.To, t.To.Rank(),
				reason, t.ExitCode, readyAt, terminatedAt, nullBytes(t.Handle), nullTime(t.LastActive)))
			switch {
			case err == nil:
				moved = true
			case !errors.Is(err, berth.ErrNotFound):
				return err
			default:
				// No row moved: there is no such backend, or it is already
				// at or past t.To. Lock the row, if any, so the answer
				// stays true until the transaction ends.
				var from berth.State
				err := tx.QueryRow(ctx, `SELECT state FROM berth_backends WHERE id = $1 FOR NO KEY UPDATE`, id).Scan(&from)
				if errors.Is(err, pgx.ErrNoRows) {
					return berth.ErrNotFound
				}
				if err != nil {
					return err
				}
				if !from.CanMoveTo(t.To) {
					return fmt.Errorf("backend is %s: %w", from, berth.ErrInvalidTransition)
				}
				// Created after the UPDATE's snapshot was taken: the row
				// is ours now, so the UPDATE again will match it.
			}
		}
		if _, err := tx.Exec(ctx, insertEvent, id, t.To, t.Reason, t.ExitCode, eventText(t.Message), at, s.channel); err != nil {
			return fmt.Errorf("insert event: %w", err)
		}
		if t.To == berth.StateTerminated && b.Key != "" && released == 0 {
			// The backend committed after releaseKey's snapshot began.
			if _, err := tx.Exec(ctx, releaseKey, id); err != nil {
				return fmt.Errorf("release key %q: %w", b.Key, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return b, nil
}

// SetHandle implements store.Store. It returns berth.ErrNotFound when there
// is no such backend.
func (s *Store) SetHandle(ctx context.Context, id string, handle []byte) error {
	if err := s.update(ctx, `UPDATE berth_backends SET handle = $2 WHERE id = $1`, id, nullBytes(handle)); err != nil {
		return fmt.Errorf("postgres: set handle %s: %w", id, err)
	}
	return nil
}

// SetLastActive implements store.Store. It returns berth.ErrNotFound when
// there is no such backend.
func (s *Store) SetLastActive(ctx context.Context, id string, at time.Time) error {
	if err := s.update(ctx, `UPDATE berth_backends SET last_active_at = $2 WHERE id = $1`, id, micros(at)); err != nil {
		return fmt.Errorf("postgres: set last active %s: %w", id, err)
	}
	return nil
}

// AddEvent appends a note to a backend's history without changing its state;
// the event carries the backend's current state. It returns
// berth.ErrNotFound when there is no such backend. It is not part of
// store.Store; the server uses it when the store offers it.
//
// It locks the backend's row as a transition does, so that the events of
// one backend commit in the order of their seq and a reader resuming after
// the last seq it saw misses none.
func (s *Store) AddEvent(ctx context.Context, id, message string) error {
	err := s.update(ctx, `WITH e AS (INSERT INTO berth_events (backend_id, state, message, at)
			SELECT id, state, $2, $3 FROM berth_backends WHERE id = $1 FOR NO KEY UPDATE
			RETURNING seq, backend_id, state)
		SELECT e.seq, pg_notify($4`+announce,
		id, eventText(message), micros(time.Now()), s.channel)
	if err != nil {
		return fmt.Errorf("postgres: add event %s: %w", id, err)
	}
	return nil
}

// update runs one statement and reports berth.ErrNotFound if it touched no
// row.
func (s *Store) update(ctx context.Context, query string, args ...any) error {
	tag, err := s.pool.Exec(ctx, query, args...)
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return berth.ErrNotFound
	}
	return nil
}

// Events implements store.Store. A backend that does not exist has no
// events: the result is empty, not an error.
func (s *Store) Events(ctx context.Context, id string, after int64) ([]berth.Event, error) {
	rows, err := s.pool.Query(ctx, `SELECT seq, backend_id, state, reason, exit_code, message, at
		FROM berth_events WHERE backend_id = $1 AND seq > $2 ORDER BY seq`, id, after)
	if err != nil {
		return nil, fmt.Errorf("postgres: events %s: %w", id, err)
	}
	defer rows.Close()
	var es []berth.Event
	for rows.Next() {
		var e berth.Event
		if err := rows.Scan(&e.Seq, &e.BackendID, &e.State, &e.Reason, &e.ExitCode, &e.Message, &e.At); err != nil {
			return nil, fmt.Errorf("postgres: events %s: %w", id, err)
		}
		e.At = e.At.UTC()
		es = append(es, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: events %s: %w", id, err)
	}
	return es, nil
}

// scanBackend reads one row of backendColumns; pgx.ErrNoRows becomes
// berth.ErrNotFound.
// Columns selected after them are scanned into extra.
func scanBackend(row pgx.Row, extra ...any) (*berth.Backend, error) {
	var (
		b     berth.Backend
		rank  int
		spawn []byte
	)
	err := row.Scan(append([]any{&b.ID, &b.Key, &b.User, &b.State, &rank, &b.Reason, &b.ExitCode, &b.FencingToken,
		&b.Runtime, &spawn, &b.Secret, &b.Handle, &b.Node, &b.CreatedAt, &b.ReadyAt, &b.TerminatedAt, &b.LastActiveAt, &b.Pool},
		extra...)...)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, berth.ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(spawn, &b.Spawn); err != nil {
		return nil, fmt.Errorf("decode spawn config of %s: %w", b.ID, err)
	}
	b.CreatedAt = b.CreatedAt.UTC()
	for _, t := range []*time.Time{b.ReadyAt, b.TerminatedAt, b.LastActiveAt} {
		if t != nil {
			*t = t.UTC()
		}
	}
	return &b, nil
}

func isUniqueViolation(err error, constraint string) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505" && pe.ConstraintName == constraint
}

// micros is t as stored: UTC, truncated to the microsecond. pgx would
// truncate too; doing it here lets CreateBackend return what it stored.
func micros(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }

func nullTime(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := micros(*t)
	return &u
}

// nullBytes maps an empty handle to NULL, which Transition reads as "keep".
func nullBytes(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}

// eventText makes a message storable: PostgreSQL's text takes neither NUL
// nor invalid UTF-8, and an event carries runtime error text, which may
// hold either; refusing it would refuse the transition it records.
func eventText(s string) string {
	return strings.ToValidUTF8(strings.ReplaceAll(s, "\x00", ""), "\uFFFD")
}
