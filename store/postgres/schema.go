package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// migrations[i] moves the schema from version i to i+1; berth_schema_version
// holds one row per version applied. Append new steps; never edit a
// released one.
//
// The tables mirror store/sqlite's, prefixed berth_ because the database
// may be one the user already runs (the blob store's tables are
// berth_blob_*). Times are timestamptz, which PostgreSQL keeps to the
// microsecond and an operator can read; ids and keys compare byte by byte
// (COLLATE "C"), as in SQLite, so "ties broken by id" means the same
// order whatever the database's locale.
var migrations = []string{
	`
CREATE TABLE berth_backends (
	id             text COLLATE "C" PRIMARY KEY,
	key            text COLLATE "C" NOT NULL DEFAULT '',
	user_name      text NOT NULL DEFAULT '',
	state          text NOT NULL,
	-- state_rank mirrors berth.State.Rank so "forward only" is a plain
	-- comparison inside the UPDATE; the check keeps the two in step.
	state_rank     integer NOT NULL,
	reason         text NOT NULL DEFAULT '',
	exit_code      integer,
	fencing_token  bigint NOT NULL,
	runtime        text NOT NULL DEFAULT '',
	-- json, not jsonb: kept as written, and it accepts the \u0000 escape.
	spawn          json NOT NULL,
	secret         text NOT NULL DEFAULT '',
	handle         bytea,
	node           text NOT NULL DEFAULT '',
	created_at     timestamptz NOT NULL,
	ready_at       timestamptz,
	terminated_at  timestamptz,
	last_active_at timestamptz,
	CONSTRAINT berth_backends_state_rank CHECK ((state, state_rank) IN
		(('scheduled', 1), ('starting', 2), ('ready', 3), ('terminating', 4), ('terminated', 5)))
);
-- Listings are newest first, ties broken by id.
CREATE INDEX berth_backends_created ON berth_backends (created_at, id);
CREATE INDEX berth_backends_key ON berth_backends (key, created_at, id);
-- Reconcile lists live backends at every start; the history of terminated
-- ones only grows.
CREATE INDEX berth_backends_live ON berth_backends (created_at, id) WHERE state <> 'terminated';

-- A key row is never deleted: fencing must keep growing across holders.
-- holder is set only while a live backend holds the key. The reference is
-- deferred because the key is taken before the backend row is inserted.
-- (No index on holder: PostgreSQL needs one only to delete or re-key a
-- backend, which Berth never does.)
CREATE TABLE berth_keys (
	key     text COLLATE "C" PRIMARY KEY,
	fencing bigint NOT NULL,
	holder  text COLLATE "C" REFERENCES berth_backends (id) DEFERRABLE INITIALLY DEFERRED
);

CREATE TABLE berth_events (
	seq        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	backend_id text COLLATE "C" NOT NULL REFERENCES berth_backends (id),
	state      text NOT NULL,
	reason     text NOT NULL DEFAULT '',
	exit_code  integer,
	message    text NOT NULL DEFAULT '',
	at         timestamptz NOT NULL
);
CREATE INDEX berth_events_backend ON berth_events (backend_id, seq);
`,
	// Replicas: one row per node. Its times are the database's
	// (clock_timestamp() when written), never the node's.
	`
CREATE TABLE berth_nodes (
	id               text COLLATE "C" PRIMARY KEY,
	proxy_addr       text NOT NULL DEFAULT '',
	api_addr         text NOT NULL DEFAULT '',
	runtimes         text[] NOT NULL DEFAULT '{}',
	capacity         integer NOT NULL DEFAULT 0,
	drained          boolean NOT NULL DEFAULT false,
	started_at       timestamptz NOT NULL,
	heartbeat_at     timestamptz NOT NULL,
	lease_expires_at timestamptz NOT NULL
);
-- A node's live backends: counted in every read of a node, listed by
-- ExpireNodes and Backends(Filter{Node}).
CREATE INDEX berth_backends_node_live ON berth_backends (node) WHERE state <> 'terminated';
`,
	// Warm pools: their definitions, and which pool started a backend
	// (store.Pools).
	`
ALTER TABLE berth_backends ADD COLUMN pool text COLLATE "C" NOT NULL DEFAULT '';
CREATE TABLE berth_pools (
	name       text COLLATE "C" PRIMARY KEY,
	spawn      json NOT NULL,
	min_ready  integer NOT NULL,
	max        integer NOT NULL DEFAULT 0,
	schedule   json NOT NULL DEFAULT '[]',
	created_at timestamptz NOT NULL,
	updated_at timestamptz NOT NULL
);
`,
}

// migrateLock is the key of the transaction-level advisory lock that
// serialises migrations: the ASCII of "berth_st". Advisory locks are per
// database, so stores in different schemas of one database also take
// turns; they hold it only for the check.
const migrateLock int64 = 0x62657274685f7374

// migrate brings the schema up to date in one transaction, so a crash
// halfway leaves the previous version intact. Replicas starting at once
// queue on the advisory lock; each statement after it (READ COMMITTED)
// sees what the replica before it committed, so the first one applies the
// steps and the others find nothing left to do.
func migrate(ctx context.Context, tx pgx.Tx) error {
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, migrateLock); err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	// Look before creating: CREATE TABLE IF NOT EXISTS would still need the
	// CREATE privilege, which an up-to-date database need not grant.
	var exists bool
	if err := tx.QueryRow(ctx, `SELECT to_regclass('berth_schema_version') IS NOT NULL`).Scan(&exists); err != nil {
		return err
	}
	if !exists {
		if _, err := tx.Exec(ctx, `CREATE TABLE berth_schema_version (
			version    integer PRIMARY KEY,
			applied_at timestamptz NOT NULL DEFAULT now()
		)`); err != nil {
			return fmt.Errorf("create berth_schema_version: %w", err)
		}
	}
	var version int
	if err := tx.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM berth_schema_version`).Scan(&version); err != nil {
		return err
	}
	if version > len(migrations) {
		return fmt.Errorf("schema version %d is newer than this build knows (%d); upgrade berth", version, len(migrations))
	}
	for i := version; i < len(migrations); i++ {
		if _, err := tx.Exec(ctx, migrations[i]); err != nil {
			return fmt.Errorf("to version %d: %w", i+1, err)
		}
		// The primary key would also refuse a step applied twice.
		if _, err := tx.Exec(ctx, `INSERT INTO berth_schema_version (version) VALUES ($1)`, i+1); err != nil {
			return fmt.Errorf("to version %d: %w", i+1, err)
		}
	}
	return nil
}
