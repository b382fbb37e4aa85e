// Package sqlite implements store.Store on an embedded SQLite database
// (modernc.org/sqlite: pure Go, no cgo). It is the default store for one
// machine. It must never be shared by Berth replicas on different machines:
// SQLite's locking does not reach across hosts; use PostgreSQL for that.
//
// All writes go through one connection, so writers queue in Go instead of
// racing for SQLite's write lock (no SQLITE_BUSY between our own
// transactions); reads use a separate pool and, in WAL mode, never wait for
// the writer. The writes that queue while a transaction runs are committed
// together in the next one (see writer), so a busy server pays for far fewer
// commits than it makes writes.
package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	sqlitedriver "modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/store"
)

var _ store.Store = (*Store)(nil)

// Store is a store.Store kept in one SQLite file. Create it with Open.
type Store struct {
	w  *sql.DB // exactly one connection; every write transaction
	r  *sql.DB // read-only pool
	wr *writer // the only user of w once open returns

	feed store.Feed // changes, published after their commit

	// Prepared once: a spawn runs CreateBackend and four Transitions.
	// Statements on w are used inside the writer's transactions only.
	takeKey, insertBackend, insertEvent, transition, releaseKey *sql.Stmt
	stateOf, holderInTx, backendInTx, claimKey                  *sql.Stmt
	backend, keyHolder, events                                  *sql.Stmt
}

// dsn is the driver's name for the database at path: a file: URI, so a
// path may hold '?', '#' or '%' (a data dir named "notes#1"), which the
// driver would otherwise take for the start of its parameters.
func dsn(path string, params url.Values) string {
	if abs, err := filepath.Abs(path); err == nil {
		path = abs // a relative one would read as the URI's authority
	}
	return (&url.URL{Scheme: "file", Path: path, RawQuery: params.Encode()}).String()
}

// Open opens the database at path, creating the file, its parent
// directories and the schema as needed, and migrating an older schema.
// path must name a file: ":memory:" would give every connection its own
// empty database.
func Open(path string) (*Store, error) {
	if path == "" || path == ":memory:" {
		return nil, fmt.Errorf("sqlite: open %q: need a file path", path)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	s, err := open(path)
	if err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	return s, nil
}

func open(path string) (_ *Store, err error) {
	// synchronous=NORMAL in WAL mode keeps every commit atomic and consistent;
	// only the last commits before a power loss (not a process crash) can be
	// lost. busy_timeout covers other processes holding the file (a second
	// berth, the sqlite3 shell, a backup). Write transactions begin
	// IMMEDIATE so a transaction that reads before it writes never has to
	// upgrade its lock, which could fail with SQLITE_BUSY at once.
	params := url.Values{
		"_busy_timeout": {"10000"},
		"_foreign_keys": {"on"},
		"_journal_mode": {"WAL"},
		"_synchronous":  {"NORMAL"},
		"_txlock":       {"immediate"},
	}
	w, err := sql.Open("sqlite", dsn(path, params))
	if err != nil {
		return nil, err
	}
	s := &Store{w: w}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)

	ctx := context.Background()
	if err := migrate(ctx, w); err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
	}

	params.Del("_journal_mode") // persistent in the file; set above
	params.Del("_txlock")
	params.Set("_query_only", "on")
	s.r, err = sql.Open("sqlite", dsn(path, params))
	if err != nil {
		return nil, err
	}
	n := max(4, runtime.GOMAXPROCS(0))
	s.r.SetMaxOpenConns(n)
	s.r.SetMaxIdleConns(n)

	for _, p := range []struct {
		db    *sql.DB
		stmt  **sql.Stmt
		query string
	}{
		// Take a free key, or take nothing (no row) if a backend holds it.
		// The first holder of a key gets fencing token 1.
		{w, &s.takeKey, `INSERT INTO keys (key, fencing, holder) VALUES (?, 1, ?)
			ON CONFLICT (key) DO UPDATE SET fencing = keys.fencing + 1, holder = excluded.holder
			WHERE keys.holder IS NULL
			RETURNING fencing`},
		{w, &s.insertBackend, `INSERT INTO backends (` + backendColumns + `)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`},
		{w, &s.insertEvent, `INSERT INTO events (backend_id, state, reason, exit_code, message, at)
			VALUES (?, ?, ?, ?, ?, ?)`},
		// Forward only, in the statement itself: a concurrent or stale
		// caller matches no row instead of moving the backend back.
		// NULL arguments leave a column as it was.
		{w, &s.transition, `UPDATE backends SET state = ?, state_rank = ?,
				reason = COALESCE(?, reason), exit_code = COALESCE(?, exit_code),
				ready_at = COALESCE(?, ready_at), terminated_at = COALESCE(?, terminated_at),
				handle = COALESCE(?, handle), last_active_at = COALESCE(?, last_active_at)
			WHERE id = ? AND state_rank < ?
			RETURNING ` + backendColumns},
		{w, &s.releaseKey, `UPDATE keys SET holder = NULL WHERE key = ? AND holder = ?`},
		{w, &s.stateOf, `SELECT state FROM backends WHERE id = ?`},
		// The holder, and when its node's lease expires (NULL for a
		// backend of a node with no row: one Berth, no lease).
		{w, &s.holderInTx, `SELECT ` + backendColumns + `,
				(SELECT lease_expires_at FROM nodes WHERE nodes.id = backends.node)
			FROM backends WHERE id = (SELECT holder FROM keys WHERE key = ?)`},
		// A claim (ClaimBackend) is on a connect's path: its statements
		// are prepared once, as a spawn's are.
		{w, &s.backendInTx, `SELECT ` + backendColumns + ` FROM backends WHERE id = ?`},
		{w, &s.claimKey, `UPDATE backends SET key = ?, user_name = ?, fencing_token = ? WHERE id = ?`},
		{s.r, &s.backend, `SELECT ` + backendColumns + ` FROM backends WHERE id = ?`},
		{s.r, &s.keyHolder, `SELECT ` + backendColumns + ` FROM backends
			WHERE id = (SELECT holder FROM keys WHERE key = ?) AND state <> 'terminated'`},
		{s.r, &s.events, `SELECT seq, backend_id, state, reason, exit_code, message, at
			FROM events WHERE backend_id = ? AND seq > ? ORDER BY seq`},
	} {
		if *p.stmt, err = p.db.PrepareContext(ctx, p.query); err != nil {
			return nil, fmt.Errorf("prepare %q: %w", p.query, err)
		}
	}
	if s.wr, err = newWriter(ctx, w); err != nil {
		return nil, err
	}
	return s, nil
}

// Close closes the database and ends every Watch. Calls in flight may
// fail; a write that was already committing finishes first.
func (s *Store) Close() error {
	if s.wr != nil {
		s.wr.close()
	}
	s.feed.Close()
	var errs []error
	for _, db := range []*sql.DB{s.r, s.w} {
		if db != nil {
			errs = append(errs, db.Close())
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("sqlite: close: %w", err)
	}
	return nil
}

// backendColumns is the column order of scanBackend and insertBackend.
const backendColumns = `id, key, user_name, state, state_rank, reason, exit_code, fencing_token,
	runtime, spawn, secret, handle, node, created_at, ready_at, terminated_at, last_active_at, pool`

// CreateBackend implements store.Store. On success it sets b.State,
// b.FencingToken and b.CreatedAt (to UTC, in microseconds, as stored) and
// returns b itself as the holder.
func (s *Store) CreateBackend(ctx context.Context, b *berth.Backend) (*berth.Backend, bool, error) {
	holder, created, err := s.createBackend(ctx, b)
	if err != nil {
		return nil, false, fmt.Errorf("sqlite: create backend %s: %w", b.ID, err)
	}
	return holder, created, nil
}

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
	created = created.UTC().Truncate(time.Microsecond)

	var (
		holder  *berth.Backend // set when another backend holds the key
		token   int64
		changes []store.Change
	)
	err = s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		// A keyless backend holds nothing and fences against nobody.
		holder, token, changes = nil, 1, nil
		if b.Key != "" {
			var err error
			if holder, changes, err = s.takeKeyTx(ctx, tx, b, &token); err != nil || holder != nil {
				return err
			}
		}
		_, err := tx.StmtContext(ctx, s.insertBackend).ExecContext(ctx,
			b.ID, b.Key, b.User, berth.StateScheduled, berth.StateScheduled.Rank(),
			b.Reason, nullInt(b.ExitCode), token, b.Runtime, string(spawn), b.Secret, b.Handle, b.Node,
			created.UnixMicro(), nullTime(b.ReadyAt), nullTime(b.TerminatedAt), nullTime(b.LastActiveAt), b.Pool)
		if err != nil {
			if isConstraint(err, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY) {
				err = berth.ErrConflict
			}
			return fmt.Errorf("insert: %w", err)
		}
		res, err := tx.StmtContext(ctx, s.insertEvent).ExecContext(ctx,
			b.ID, berth.StateScheduled, "", nil, "", created.UnixMicro())
		if err != nil {
			return fmt.Errorf("insert event: %w", err)
		}
		c, err := change(res, b, berth.StateScheduled)
		changes = append(changes, c)
		return err
	})
	if err != nil {
		return nil, false, err
	}
	s.feed.Publish(changes...)
	if holder != nil {
		return holder, false, nil
	}
	b.State, b.FencingToken, b.CreatedAt = berth.StateScheduled, token, created
	return b, true, nil
}

// takeKeyTx takes b's key inside tx and sets *token to its fencing token,
// or returns the live holder. A holder whose node's lease has expired is
// moved to terminated (lost) first, and the key is taken from it; changes
// are the events that appended.
func (s *Store) takeKeyTx(ctx context.Context, tx *sql.Tx, b *berth.Backend, token *int64) (*berth.Backend, []store.Change, error) {
	var changes []store.Change
	for {
		err := tx.StmtContext(ctx, s.takeKey).QueryRowContext(ctx, b.Key, b.ID).Scan(token)
		if err == nil {
			return nil, changes, nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return nil, nil, fmt.Errorf("take key %q: %w", b.Key, err)
		}
		var lease sql.NullInt64
		holder, err := scanBackend(tx.StmtContext(ctx, s.holderInTx).QueryRowContext(ctx, b.Key), &lease)
		if err != nil {
			return nil, nil, fmt.Errorf("read holder of %q: %w", b.Key, err)
		}
		// All writes share one connection, so the clock read here is the
		// one every other judge of this lease reads, in order.
		now := time.Now()
		if !lease.Valid || lease.Int64 > now.UnixMicro() || len(changes) > 0 {
			return holder, changes, nil
		}
		_, c, err := s.loseTx(ctx, tx, holder, now)
		if err != nil {
			return nil, nil, err
		}
		changes = append(changes, c)
	}
}

// Backend implements store.Store.
func (s *Store) Backend(ctx context.Context, id string) (*berth.Backend, error) {
	b, err := scanBackend(s.backend.QueryRowContext(ctx, id))
	if err != nil {
		return nil, fmt.Errorf("sqlite: backend %s: %w", id, err)
	}
	return b, nil
}

// KeyHolder implements store.Store.
func (s *Store) KeyHolder(ctx context.Context, key string) (*berth.Backend, error) {
	b, err := scanBackend(s.keyHolder.QueryRowContext(ctx, key))
	if err != nil {
		return nil, fmt.Errorf("sqlite: key holder %q: %w", key, err)
	}
	return b, nil
}

// Backends implements store.Store.
func (s *Store) Backends(ctx context.Context, f store.Filter) ([]*berth.Backend, error) {
	var (
		where []string
		args  []any
	)
	if f.Key != "" {
		where, args = append(where, "key = ?"), append(args, f.Key)
	}
	if f.State != "" {
		where, args = append(where, "state = ?"), append(args, f.State)
	}
	if f.Node != "" {
		where, args = append(where, "node = ?"), append(args, f.Node)
	}
	// Said again for a live state, so a node's live backends are found by
	// the partial index backends_node_live, not among all its history.
	if f.Live || f.State.Live() {
		where = append(where, "state <> 'terminated'")
	}
	q := "SELECT " + backendColumns + " FROM backends"
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	// id breaks ties so equal timestamps still list in a stable order.
	q += " ORDER BY created_at DESC, id DESC"
	if f.Limit > 0 {
		q += " LIMIT ?"
		args = append(args, f.Limit)
	}

	rows, err := s.r.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("sqlite: list backends: %w", err)
	}
	defer rows.Close()
	var bs []*berth.Backend
	for rows.Next() {
		b, err := scanBackend(rows)
		if err != nil {
			return nil, fmt.Errorf("sqlite: list backends: %w", err)
		}
		bs = append(bs, b)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: list backends: %w", err)
	}
	return bs, nil
}

// Transition implements store.Store. A zero t.At means now; an empty
// t.Reason or nil t.ExitCode keeps the backend's earlier value, so a reason
// given when terminating survives into terminated.
func (s *Store) Transition(ctx context.Context, id string, t store.Transition) (*berth.Backend, error) {
	b, err := s.doTransition(ctx, id, t)
	if err != nil {
		return nil, fmt.Errorf("sqlite: transition %s to %s: %w", id, t.To, err)
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
	var (
		b *berth.Backend
		c store.Change
	)
	err := s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		var err error
		b, c, err = s.transitionTx(ctx, tx, id, t, at)
		return err
	})
	if err != nil {
		return nil, err
	}
	s.feed.Publish(c)
	return b, nil
}

// transitionTx is Transition inside tx, happening at at. It returns the
// backend as updated and the change to publish once tx commits.
func (s *Store) transitionTx(ctx context.Context, tx *sql.Tx, id string, t store.Transition, at time.Time) (*berth.Backend, store.Change, error) {
	var readyAt, terminatedAt any
	switch t.To {
	case berth.StateReady:
		readyAt = at.UnixMicro()
	case berth.StateTerminated:
		terminatedAt = at.UnixMicro()
	}
	var reason, handle, lastActive any
	if t.Reason != "" {
		reason = t.Reason
	}
	if len(t.Handle) > 0 {
		handle = t.Handle
	}
	if t.LastActive != nil {
		lastActive = t.LastActive.UnixMicro()
	}

	b, err := scanBackend(tx.StmtContext(ctx, s.transition).QueryRowContext(ctx,
		t.To, t.To.Rank(), reason, nullInt(t.ExitCode), readyAt, terminatedAt, handle, lastActive, id, t.To.Rank()))
	if errors.Is(err, berth.ErrNotFound) {
		// No row moved: either there is no such backend or it is
		// already at or past t.To. The write lock is still ours, so
		// this read agrees with the update.
		var from berth.State
		if err := tx.StmtContext(ctx, s.stateOf).QueryRowContext(ctx, id).Scan(&from); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return nil, store.Change{}, berth.ErrNotFound
			}
			return nil, store.Change{}, err
		}
		return nil, store.Change{}, fmt.Errorf("backend is %s: %w", from, berth.ErrInvalidTransition)
	}
	if err != nil {
		return nil, store.Change{}, err
	}
	res, err := tx.StmtContext(ctx, s.insertEvent).ExecContext(ctx,
		id, t.To, t.Reason, nullInt(t.ExitCode), t.Message, at.UnixMicro())
	if err != nil {
		return nil, store.Change{}, fmt.Errorf("insert event: %w", err)
	}
	if t.To == berth.StateTerminated && b.Key != "" {
		if _, err := tx.StmtContext(ctx, s.releaseKey).ExecContext(ctx, b.Key, id); err != nil {
			return nil, store.Change{}, fmt.Errorf("release key %q: %w", b.Key, err)
		}
	}
	c, err := change(res, b, t.To)
	return b, c, err
}

// loseTx moves live backend b, whose node's lease has expired, to
// terminated (lost) inside tx, at now.
func (s *Store) loseTx(ctx context.Context, tx *sql.Tx, b *berth.Backend, now time.Time) (*berth.Backend, store.Change, error) {
	return s.transitionTx(ctx, tx, b.ID, store.Transition{To: berth.StateTerminated, Reason: berth.ReasonLost,
		Message: "node " + b.Node + " did not renew its lease"}, now)
}

// change is the Change of the event res inserted for b.
func change(res sql.Result, b *berth.Backend, st berth.State) (store.Change, error) {
	seq, err := res.LastInsertId()
	if err != nil {
		return store.Change{}, fmt.Errorf("event seq: %w", err)
	}
	return store.Change{Seq: seq, BackendID: b.ID, Key: b.Key, Node: b.Node, State: st}, nil
}

// SetHandle implements store.Store. It returns berth.ErrNotFound when there
// is no such backend.
func (s *Store) SetHandle(ctx context.Context, id string, handle []byte) error {
	if err := s.update(ctx, `UPDATE backends SET handle = ? WHERE id = ?`, handle, id); err != nil {
		return fmt.Errorf("sqlite: set handle %s: %w", id, err)
	}
	return nil
}

// SetLastActive implements store.Store. It returns berth.ErrNotFound when
// there is no such backend.
func (s *Store) SetLastActive(ctx context.Context, id string, at time.Time) error {
	if err := s.update(ctx, `UPDATE backends SET last_active_at = ? WHERE id = ?`, at.UnixMicro(), id); err != nil {
		return fmt.Errorf("sqlite: set last active %s: %w", id, err)
	}
	return nil
}

// AddEvent appends a note to a backend's history without changing its state;
// the event carries the backend's current state. It returns
// berth.ErrNotFound when there is no such backend. It is not part of
// store.Store; the server uses it when the store offers it.
func (s *Store) AddEvent(ctx context.Context, id, message string) error {
	var c store.Change
	err := s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		c = store.Change{BackendID: id}
		err := tx.QueryRowContext(ctx, `INSERT INTO events (backend_id, state, message, at)
			SELECT id, state, ?, ? FROM backends WHERE id = ?
			RETURNING seq, state, (SELECT key FROM backends WHERE id = backend_id),
				(SELECT node FROM backends WHERE id = backend_id)`,
			message, time.Now().UnixMicro(), id).Scan(&c.Seq, &c.State, &c.Key, &c.Node)
		if errors.Is(err, sql.ErrNoRows) {
			return berth.ErrNotFound
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("sqlite: add event %s: %w", id, err)
	}
	s.feed.Publish(c)
	return nil
}

// update runs one write and reports berth.ErrNotFound if it touched no row.
func (s *Store) update(ctx context.Context, query string, args ...any) error {
	return s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, query, args...)
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		if err != nil {
			return err
		}
		if n == 0 {
			return berth.ErrNotFound
		}
		return nil
	})
}

// Events implements store.Store. A backend that does not exist has no
// events: the result is empty, not an error.
func (s *Store) Events(ctx context.Context, id string, after int64) ([]berth.Event, error) {
	rows, err := s.events.QueryContext(ctx, id, after)
	if err != nil {
		return nil, fmt.Errorf("sqlite: events %s: %w", id, err)
	}
	defer rows.Close()
	var es []berth.Event
	for rows.Next() {
		var (
			e    berth.Event
			code sql.NullInt64
			at   int64
		)
		if err := rows.Scan(&e.Seq, &e.BackendID, &e.State, &e.Reason, &code, &e.Message, &at); err != nil {
			return nil, fmt.Errorf("sqlite: events %s: %w", id, err)
		}
		e.ExitCode, e.At = intPtr(code), fromMicros(at)
		es = append(es, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: events %s: %w", id, err)
	}
	return es, nil
}

// scanBackend reads one row of backendColumns; sql.ErrNoRows becomes
// berth.ErrNotFound.
// Columns selected after them are scanned into extra.
func scanBackend(row interface{ Scan(...any) error }, extra ...any) (*berth.Backend, error) {
	var (
		b                                 berth.Backend
		rank                              int
		code                              sql.NullInt64
		spawn                             []byte
		created                           int64
		readyAt, terminatedAt, lastActive sql.NullInt64
	)
	err := row.Scan(append([]any{&b.ID, &b.Key, &b.User, &b.State, &rank, &b.Reason, &code, &b.FencingToken,
		&b.Runtime, &spawn, &b.Secret, &b.Handle, &b.Node, &created, &readyAt, &terminatedAt, &lastActive, &b.Pool}, extra...)...)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, berth.ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(spawn, &b.Spawn); err != nil {
		return nil, fmt.Errorf("decode spawn config of %s: %w", b.ID, err)
	}
	b.ExitCode = intPtr(code)
	b.CreatedAt = fromMicros(created)
	b.ReadyAt, b.TerminatedAt, b.LastActiveAt = timePtr(readyAt), timePtr(terminatedAt), timePtr(lastActive)
	return &b, nil
}

func isConstraint(err error, code int) bool {
	var se *sqlitedriver.Error
	return errors.As(err, &se) && se.Code() == code
}

func fromMicros(us int64) time.Time { return time.UnixMicro(us).UTC() }

func nullTime(t *time.Time) any {
	if t == nil {
		return nil
	}
	return t.UnixMicro()
}

func timePtr(v sql.NullInt64) *time.Time {
	if !v.Valid {
		return nil
	}
	t := fromMicros(v.Int64)
	return &t
}

func nullInt(p *int) any {
	if p == nil {
		return nil
	}
	return *p
}

func intPtr(v sql.NullInt64) *int {
	if !v.Valid {
		return nil
	}
	n := int(v.Int64)
	return &n
}
