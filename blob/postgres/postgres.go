// Package postgres is the blob store in a PostgreSQL database the user
// already runs (URL postgres://…). It reaches the database only through a
// bounded pool (default 4 connections; pool_max_conns=N in the URL), so
// Berth never exhausts the database's connection limit, and it never holds
// a connection while waiting on the caller's reader.
//
// Tables (created if missing, all prefixed berth_blob_):
//
//	berth_blob_keys      key, fence, current_version, rev (commits so far)
//	berth_blob_versions  key, version, seq (the commit's rev; NULL while
//	                     pending), size, fence, saved_at, sha256, chunks,
//	                     trimmed_at (set when trimmed or deleted)
//	berth_blob_chunks    key, version, n, data bytea (ChunkSize each)
//
// Bodies are stored as numbered chunk rows rather than one bytea (which
// the protocol would need whole in memory) or large objects (which need a
// transaction held open for the whole upload and are not deleted with their
// rows). A Put inserts a pending version row, streams the body in chunks,
// each its own short statement, then commits in one short transaction whose
// first statement is the fence compare:
//
//	INSERT INTO berth_blob_keys … ON CONFLICT (key) DO UPDATE
//	  SET fence = $fence, current_version = $version, rev = rev + 1
//	  WHERE berth_blob_keys.fence <= $fence RETURNING rev
//
// No row back means a newer holder fenced the key: the transaction rolls
// back and the pending version is deleted. The row lock taken there orders
// the commit against every Fence, Put, Restore and Delete of the key, so
// the check and the write are one atomic step. Readers only ever see
// committed versions (seq set), whose chunks never change. A version
// trimmed from the history (or deleted) leaves Versions at once but keeps
// its chunks for TrimGrace, so a Get already reading it can finish; a
// later commit of the key purges it.
package postgres

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/berthhq/berth/blob"
)

// Config says how to reach the database.
type Config struct {
	// URL is a PostgreSQL connection URL or keyword/value string, as pgx
	// reads it. pool_max_conns in it overrides MaxConns.
	URL string
	// MaxConns bounds the pool (default 4).
	MaxConns int32
	// ChunkSize is the size of one stored chunk, and so about the memory
	// one Put or Get holds (default 1 MiB).
	ChunkSize int
	// TrimGrace is how long the chunks of a save trimmed from the history
	// (or deleted) are kept, so that a Get already reading it can finish
	// (default 2 minutes). The save leaves Versions at once.
	TrimGrace time.Duration
}

const (
	defaultMaxConns  = 4
	defaultChunkSize = 1 << 20
	defaultTrimGrace = 2 * time.Minute
	// pendingTTL is how old a never-committed version must be before a
	// commit of the same key deletes it as the leftover of a crash.
	pendingTTL = "1 day"
)

// Store is the PostgreSQL blob store.
type Store struct {
	pool *pgxpool.Pool
	cfg  Config
	opts blob.Options
	bufs sync.Pool // *[]byte of cfg.ChunkSize
}

var _ blob.Store = (*Store)(nil)

// Open opens the store a postgres:// (or postgresql://) URL names. Besides
// what pgx understands (pool_max_conns among them), it reads chunk_kb, the
// chunk size in KiB.
func Open(ctx context.Context, rawURL string, opts blob.Options) (*Store, error) {
	cfg := Config{URL: rawURL}
	if u, err := url.Parse(rawURL); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		q := u.Query()
		if v := q.Get("chunk_kb"); v != "" {
			kb, err := strconv.Atoi(v)
			if err != nil || kb <= 0 {
				return nil, fmt.Errorf("postgres: URL query chunk_kb=%q: want a positive number", v)
			}
			cfg.ChunkSize = kb << 10
			q.Del("chunk_kb")
			u.RawQuery = q.Encode()
			cfg.URL = u.String()
		}
	}
	return New(ctx, cfg, opts)
}

// New connects, creates the tables if missing, and returns the store.
func New(ctx context.Context, cfg Config, opts blob.Options) (*Store, error) {
	pcfg, err := pgxpool.ParseConfig(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	if !strings.Contains(cfg.URL, "pool_max_conns") {
		pcfg.MaxConns = cfg.MaxConns
		if pcfg.MaxConns <= 0 {
			pcfg.MaxConns = defaultMaxConns
		}
	}
	if cfg.ChunkSize <= 0 {
		cfg.ChunkSize = defaultChunkSize
	}
	if cfg.TrimGrace <= 0 {
		cfg.TrimGrace = defaultTrimGrace
	}
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	s := &Store{pool: pool, cfg: cfg, opts: opts.WithDefaults()}
	s.bufs.New = func() any { b := make([]byte, cfg.ChunkSize); return &b }
	if err := s.migrate(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	return s, nil
}

// MaxConns reports the pool's bound.
func (s *Store) MaxConns() int32 { return s.pool.Config().MaxConns }

// Close closes the pool.
func (s *Store) Close() error {
	s.pool.Close()
	return nil
}

const schema = `
CREATE TABLE IF NOT EXISTS berth_blob_keys (
	key             text PRIMARY KEY,
	fence           bigint NOT NULL DEFAULT 0,
	current_version text,
	rev             bigint NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS berth_blob_versions (
	key        text NOT NULL,
	version    text NOT NULL,
	seq        bigint,
	size       bigint NOT NULL DEFAULT 0,
	fence      bigint NOT NULL,
	saved_at   timestamptz NOT NULL,
	sha256     text NOT NULL DEFAULT '',
	chunks     integer NOT NULL DEFAULT 0,
	created_at timestamptz NOT NULL DEFAULT now(),
	trimmed_at timestamptz,
	PRIMARY KEY (key, version)
);
CREATE INDEX IF NOT EXISTS berth_blob_versions_key_seq ON berth_blob_versions (key, seq);
CREATE TABLE IF NOT EXISTS berth_blob_chunks (
	key     text NOT NULL,
	version text NOT NULL,
	n       integer NOT NULL,
	data    bytea NOT NULL,
	PRIMARY KEY (key, version, n),
	FOREIGN KEY (key, version) REFERENCES berth_blob_versions (key, version) ON DELETE CASCADE
);`

// migrate creates the tables. The advisory lock keeps two Berth processes
// starting at once from racing on CREATE TABLE IF NOT EXISTS.
func (s *Store) migrate(ctx context.Context) error {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('berth_blob_schema'))`); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, schema)
		return err
	})
	if err != nil {
		return fmt.Errorf("postgres: create tables: %w", err)
	}
	return nil
}

const infoCols = `v.key, v.version, v.size, v.fence, v.saved_at, v.sha256, v.chunks`

func scanInfo(row pgx.Row) (blob.Info, int, error) {
	var info blob.Info
	var chunks int
	err := row.Scan(&info.Key, &info.Version, &info.Size, &info.Fence, &info.SavedAt, &info.SHA256, &chunks)
	info.SavedAt = info.SavedAt.UTC()
	return info, chunks, err
}

// Get opens key's current state.
func (s *Store) Get(ctx context.Context, key string) (io.ReadCloser, blob.Info, error) {
	if err := blob.ValidateKey(key); err != nil {
		return nil, blob.Info{}, err
	}
	info, chunks, err := scanInfo(s.pool.QueryRow(ctx, `SELECT `+infoCols+`
		FROM berth_blob_keys k JOIN berth_blob_versions v ON v.key = k.key AND v.version = k.current_version
		WHERE k.key = $1`, key))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, blob.Info{}, fmt.Errorf("postgres: get %q: %w", key, blob.ErrNotFound)
	}
	if err != nil {
		return nil, blob.Info{}, fmt.Errorf("postgres: get %q: %w", key, err)
	}
	return &chunkReader{ctx: ctx, s: s, info: info, chunks: chunks}, info, nil
}

// GetVersion opens one save of key.
func (s *Store) GetVersion(ctx context.Context, key, version string) (io.ReadCloser, blob.Info, error) {
	if err := blob.ValidateKey(key); err != nil {
		return nil, blob.Info{}, err
	}
	if !blob.ValidVersion(version) {
		return nil, blob.Info{}, fmt.Errorf("postgres: get %q version %q: %w", key, version, blob.ErrNotFound)
	}
	info, chunks, err := scanInfo(s.pool.QueryRow(ctx, `SELECT `+infoCols+`
		FROM berth_blob_versions v WHERE v.key = $1 AND v.version = $2 AND `+live, key, version))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, blob.Info{}, fmt.Errorf("postgres: get %q version %q: %w", key, version, blob.ErrNotFound)
	}
	if err != nil {
		return nil, blob.Info{}, fmt.Errorf("postgres: get %q version %q: %w", key, version, err)
	}
	return &chunkReader{ctx: ctx, s: s, info: info, chunks: chunks}, info, nil
}

// chunkReader reads a version chunk by chunk, one short query each, so a
// slow reader holds no connection between reads.
type chunkReader struct {
	ctx    context.Context
	s      *Store
	info   blob.Info
	chunks int
	n      int
	buf    []byte
}

func (r *chunkReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.n >= r.chunks {
			return 0, io.EOF
		}
		err := r.s.pool.QueryRow(r.ctx, `SELECT data FROM berth_blob_chunks WHERE key = $1 AND version = $2 AND n = $3`,
			r.info.Key, r.info.Version, r.n).Scan(&r.buf)
		if errors.Is(err, pgx.ErrNoRows) {
			return 0, fmt.Errorf("postgres: read %q version %s: chunk %d is gone: the version was trimmed or deleted while being read", r.info.Key, r.info.Version, r.n)
		}
		if err != nil {
			return 0, fmt.Errorf("postgres: read %q version %s: %w", r.info.Key, r.info.Version, err)
		}
		r.n++
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

func (r *chunkReader) Close() error { return nil }

// keyFence returns key's fence (0 for a key never fenced).
func (s *Store) keyFence(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, key string, lock bool) (int64, error) {
	sql := `SELECT fence FROM berth_blob_keys WHERE key = $1`
	if lock {
		sql += ` FOR UPDATE`
	}
	var fence int64
	err := q.QueryRow(ctx, sql, key).Scan(&fence)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	return fence, err
}

// Put streams r into a pending version, chunk by chunk, then commits it.
func (s *Store) Put(ctx context.Context, key string, fence int64, r io.Reader) (blob.Info, error) {
	if err := blob.ValidateKey(key); err != nil {
		return blob.Info{}, err
	}
	// Refuse a doomed write before storing it. Only an optimisation: the
	// check that counts is the one in the commit.
	cur, err := s.keyFence(ctx, s.pool, key, false)
	if err != nil {
		return blob.Info{}, fmt.Errorf("postgres: put %q: %w", key, err)
	}
	if fence < cur {
		return blob.Info{}, blob.Fenced(key, fence, cur)
	}
	now := time.Now().UTC().Truncate(time.Microsecond)
	info := blob.Info{Key: key, Version: blob.NewVersion(now), Fence: fence, SavedAt: now}
	if _, err := s.pool.Exec(ctx, `INSERT INTO berth_blob_versions (key, version, fence, saved_at) VALUES ($1, $2, $3, $4)`,
		key, info.Version, fence, now); err != nil {
		return blob.Info{}, fmt.Errorf("postgres: put %q: %w", key, err)
	}
	committed := false
	defer func() {
		if !committed {
			s.dropPending(ctx, key, info.Version)
		}
	}()

	bp := s.bufs.Get().(*[]byte)
	defer s.bufs.Put(bp)
	buf := *bp
	h := sha256.New()
	chunks := 0
	for {
		n, rerr := io.ReadFull(blob.ContextReader(ctx, r), buf)
		if n > 0 {
			h.Write(buf[:n])
			info.Size += int64(n)
			if _, err := s.pool.Exec(ctx, `INSERT INTO berth_blob_chunks (key, version, n, data) VALUES ($1, $2, $3, $4)`,
				key, info.Version, chunks, buf[:n]); err != nil {
				return blob.Info{}, fmt.Errorf("postgres: put %q: %w", key, err)
			}
			chunks++
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return blob.Info{}, fmt.Errorf("postgres: put %q: %w", key, rerr)
		}
	}
	info.SHA256 = hex.EncodeToString(h.Sum(nil))

	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		return s.commit(ctx, tx, info, chunks)
	})
	if err != nil {
		return blob.Info{}, s.commitErr(ctx, "put", info, err)
	}
	committed = true
	return info, nil
}

// commit makes the pending version info current, inside tx. Its first
// statement compares and raises the fence, and locks the key's row.
func (s *Store) commit(ctx context.Context, tx pgx.Tx, info blob.Info, chunks int) error {
	var rev int64
	err := tx.QueryRow(ctx, `
		INSERT INTO berth_blob_keys AS k (key, fence, current_version, rev) VALUES ($1, $2, $3, 1)
		ON CONFLICT (key) DO UPDATE
			SET fence = EXCLUDED.fence, current_version = EXCLUDED.current_version, rev = k.rev + 1
			WHERE k.fence <= EXCLUDED.fence
		RETURNING rev`, info.Key, info.Fence, info.Version).Scan(&rev)
	if errors.Is(err, pgx.ErrNoRows) {
		return errFenced
	}
	if err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `UPDATE berth_blob_versions SET seq = $3, size = $4, sha256 = $5, chunks = $6
		WHERE key = $1 AND version = $2`, info.Key, info.Version, rev, info.Size, info.SHA256, chunks); err != nil {
		return err
	}
	// Trim the history to the newest History commits.
	if _, err := tx.Exec(ctx, `UPDATE berth_blob_versions SET trimmed_at = now()
		WHERE key = $1 AND seq <= $2 AND trimmed_at IS NULL`, info.Key, rev-int64(s.opts.History)); err != nil {
		return err
	}
	return s.purge(ctx, tx, info.Key)
}

// purge deletes, with their chunks, the versions of key trimmed longer than
// TrimGrace ago and the pending versions of writers that died long ago.
func (s *Store) purge(ctx context.Context, tx pgx.Tx, key string) error {
	_, err := tx.Exec(ctx, `DELETE FROM berth_blob_versions WHERE key = $1 AND
		(trimmed_at < now() - make_interval(secs => $2) OR (seq IS NULL AND created_at < now() - interval '`+pendingTTL+`'))`,
		key, s.cfg.TrimGrace.Seconds())
	return err
}

// live selects the versions of the history (v aliases berth_blob_versions):
// committed and neither trimmed nor deleted.
const live = `v.seq IS NOT NULL AND v.trimmed_at IS NULL`

var errFenced = errors.New("fenced")

// commitErr turns a failed commit into the error to return.
func (s *Store) commitErr(ctx context.Context, op string, info blob.Info, err error) error {
	if errors.Is(err, errFenced) {
		cur, ferr := s.keyFence(context.WithoutCancel(ctx), s.pool, info.Key, false)
		if ferr != nil {
			cur = info.Fence + 1 // unknown, but higher
		}
		return blob.Fenced(info.Key, info.Fence, cur)
	}
	return fmt.Errorf("postgres: %s %q: %w", op, info.Key, err)
}

// dropPending deletes a version that was never committed, and its chunks.
// It runs even when ctx has ended; failure leaves garbage that a later
// commit of the key removes, so it is logged.
func (s *Store) dropPending(ctx context.Context, key, version string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if _, err := s.pool.Exec(ctx, `DELETE FROM berth_blob_versions WHERE key = $1 AND version = $2 AND seq IS NULL`, key, version); err != nil {
		s.opts.Logger.Warn("postgres blob store: drop uncommitted version", "key", key, "version", version, "err", err)
	}
}

// Fence raises key's fence.
func (s *Store) Fence(ctx context.Context, key string, fence int64) error {
	if err := blob.ValidateKey(key); err != nil {
		return err
	}
	if fence <= 0 {
		// Every key's fence starts at 0: nothing to raise, so only answer
		// (callers probe a key's fence this way) and write no row.
		cur, err := s.keyFence(ctx, s.pool, key, false)
		if err != nil {
			return fmt.Errorf("postgres: fence %q: %w", key, err)
		}
		if cur > fence {
			return blob.Fenced(key, fence, cur)
		}
		return nil
	}
	tag, err := s.pool.Exec(ctx, `
		INSERT INTO berth_blob_keys AS k (key, fence) VALUES ($1, $2)
		ON CONFLICT (key) DO UPDATE SET fence = EXCLUDED.fence WHERE k.fence < EXCLUDED.fence`, key, fence)
	if err != nil {
		return fmt.Errorf("postgres: fence %q: %w", key, err)
	}
	if tag.RowsAffected() == 1 {
		return nil
	}
	// Not raised: already there (fine) or higher (refused). Fences only
	// grow, so reading it now cannot turn a refusal into a success.
	cur, err := s.keyFence(ctx, s.pool, key, false)
	if err != nil {
		return fmt.Errorf("postgres: fence %q: %w", key, err)
	}
	if cur > fence {
		return blob.Fenced(key, fence, cur)
	}
	return nil
}

// Versions lists key's saves, newest first.
func (s *Store) Versions(ctx context.Context, key string) ([]blob.Info, error) {
	if err := blob.ValidateKey(key); err != nil {
		return nil, err
	}
	rows, err := s.pool.Query(ctx, `SELECT `+infoCols+` FROM berth_blob_versions v
		WHERE v.key = $1 AND `+live+` ORDER BY v.seq DESC`, key)
	if err != nil {
		return nil, fmt.Errorf("postgres: versions of %q: %w", key, err)
	}
	defer rows.Close()
	out := []blob.Info{}
	for rows.Next() {
		info, _, err := scanInfo(rows)
		if err != nil {
			return nil, fmt.Errorf("postgres: versions of %q: %w", key, err)
		}
		out = append(out, info)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: versions of %q: %w", key, err)
	}
	return out, nil
}

// Restore copies an earlier save's chunks to a new version inside the
// database and commits it, in one transaction.
func (s *Store) Restore(ctx context.Context, key, version string, fence int64) (blob.Info, error) {
	if err := blob.ValidateKey(key); err != nil {
		return blob.Info{}, err
	}
	if !blob.ValidVersion(version) {
		return blob.Info{}, fmt.Errorf("postgres: restore %q version %q: %w", key, version, blob.ErrNotFound)
	}
	now := time.Now().UTC().Truncate(time.Microsecond)
	info := blob.Info{Key: key, Version: blob.NewVersion(now), Fence: fence, SavedAt: now}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// Lock the key's row first, as every commit does, so the source
		// cannot be trimmed while it is copied.
		cur, err := s.keyFence(ctx, tx, key, true)
		if err != nil {
			return err
		}
		var chunks int
		err = tx.QueryRow(ctx, `SELECT size, sha256, chunks FROM berth_blob_versions v
			WHERE key = $1 AND version = $2 AND `+live, key, version).Scan(&info.Size, &info.SHA256, &chunks)
		if errors.Is(err, pgx.ErrNoRows) {
			return blob.ErrNotFound
		}
		if err != nil {
			return err
		}
		if fence < cur {
			return errFenced
		}
		if _, err := tx.Exec(ctx, `INSERT INTO berth_blob_versions (key, version, fence, saved_at) VALUES ($1, $2, $3, $4)`,
			key, info.Version, fence, now); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO berth_blob_chunks (key, version, n, data)
			SELECT key, $3, n, data FROM berth_blob_chunks WHERE key = $1 AND version = $2`, key, version, info.Version); err != nil {
			return err
		}
		return s.commit(ctx, tx, info, chunks)
	})
	if errors.Is(err, blob.ErrNotFound) {
		return blob.Info{}, fmt.Errorf("postgres: restore %q version %q: %w", key, version, blob.ErrNotFound)
	}
	if err != nil {
		return blob.Info{}, s.commitErr(ctx, "restore", info, err)
	}
	return info, nil
}

// Delete removes every committed save of key; its fence stays.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := blob.ValidateKey(key); err != nil {
		return err
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE berth_blob_keys SET current_version = NULL WHERE key = $1`, key)
		if err != nil || tag.RowsAffected() == 0 {
			return err
		}
		// Like trimming: gone from the history now, chunks after TrimGrace.
		if _, err = tx.Exec(ctx, `UPDATE berth_blob_versions SET trimmed_at = now()
			WHERE key = $1 AND seq IS NOT NULL AND trimmed_at IS NULL`, key); err != nil {
			return err
		}
		return s.purge(ctx, tx, key)
	})
	if err != nil {
		return fmt.Errorf("postgres: delete %q: %w", key, err)
	}
	return nil
}
