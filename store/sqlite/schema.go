package sqlite

import (
	"context"
	"database/sql"
	"fmt"
)

// migrations[i] moves the schema from version i to i+1; PRAGMA user_version
// holds the version reached. Append new steps; never edit a released one.
//
// store/postgres has the same tables and rules (prefixed berth_, with
// timestamptz times); here times are BIGINT microseconds since the Unix
// epoch (UTC), INTEGER PRIMARY KEY AUTOINCREMENT stands where PostgreSQL
// has an identity column, and the spawn config is JSON text.
var migrations = []string{
	`
CREATE TABLE backends (
	id             TEXT PRIMARY KEY,
	key            TEXT NOT NULL DEFAULT '',
	user_name      TEXT NOT NULL DEFAULT '',
	state          TEXT NOT NULL,
	-- state_rank mirrors berth.State.Rank so "forward only" is a plain
	-- comparison inside the UPDATE.
	state_rank     INTEGER NOT NULL,
	reason         TEXT NOT NULL DEFAULT '',
	exit_code      INTEGER,
	fencing_token  BIGINT NOT NULL,
	runtime        TEXT NOT NULL DEFAULT '',
	spawn          TEXT NOT NULL,
	secret         TEXT NOT NULL DEFAULT '',
	handle         BLOB,
	node           TEXT NOT NULL DEFAULT '',
	created_at     BIGINT NOT NULL,
	ready_at       BIGINT,
	terminated_at  BIGINT,
	last_active_at BIGINT
);
-- Listings are newest first, ties broken by id.
CREATE INDEX backends_created ON backends (created_at, id);
CREATE INDEX backends_key ON backends (key, created_at, id);
-- Reconcile lists live backends at every start; the history of terminated
-- ones only grows.
CREATE INDEX backends_live ON backends (created_at, id) WHERE state <> 'terminated';

-- A key row is never deleted: fencing must keep growing across holders.
-- holder is set only while a live backend holds the key. The reference is
-- deferred because the key is taken before the backend row is inserted.
CREATE TABLE keys (
	key     TEXT PRIMARY KEY,
	fencing BIGINT NOT NULL,
	holder  TEXT REFERENCES backends (id) DEFERRABLE INITIALLY DEFERRED
);

CREATE TABLE events (
	seq        INTEGER PRIMARY KEY AUTOINCREMENT,
	backend_id TEXT NOT NULL REFERENCES backends (id),
	state      TEXT NOT NULL,
	reason     TEXT NOT NULL DEFAULT '',
	exit_code  INTEGER,
	message    TEXT NOT NULL DEFAULT '',
	at         BIGINT NOT NULL
);
CREATE INDEX events_backend ON events (backend_id, seq);
`,
	// Inserting a backend settles the deferred reference keys.holder →
	// backends.id, for which SQLite looks up the keys that name the new
	// backend: without this index, a scan of every key ever used, in every
	// CreateBackend.
	`
CREATE INDEX keys_holder ON keys (holder);
`,
	// Replicas: one row per node, its lease kept in the database's time
	// (here the host's, in microseconds). runtimes is a JSON array.
	`
CREATE TABLE nodes (
	id               TEXT PRIMARY KEY,
	proxy_addr       TEXT NOT NULL DEFAULT '',
	api_addr         TEXT NOT NULL DEFAULT '',
	runtimes         TEXT NOT NULL DEFAULT '[]',
	capacity         INTEGER NOT NULL DEFAULT 0,
	drained          INTEGER NOT NULL DEFAULT 0,
	started_at       BIGINT NOT NULL,
	heartbeat_at     BIGINT NOT NULL,
	lease_expires_at BIGINT NOT NULL
);
-- A node's live backends: counted in every read of a node, listed by
-- ExpireNodes and Backends(Filter{Node}).
CREATE INDEX backends_node_live ON backends (node) WHERE state <> 'terminated';
`,
	// Warm pools: their definitions, and which pool started a backend
	// (store.Pools). spawn and schedule are JSON text.
	`
ALTER TABLE backends ADD COLUMN pool TEXT NOT NULL DEFAULT '';
CREATE TABLE pools (
	name       TEXT PRIMARY KEY,
	spawn      TEXT NOT NULL,
	min_ready  INTEGER NOT NULL,
	max        INTEGER NOT NULL DEFAULT 0,
	schedule   TEXT NOT NULL DEFAULT '[]',
	created_at BIGINT NOT NULL,
	updated_at BIGINT NOT NULL
);
`,
}

// migrate brings the schema up to date in one transaction, so a crash halfway
// leaves the previous version intact. db must be the write pool: its
// transactions begin IMMEDIATE, which also serialises two processes opening
// the same new file.
func migrate(ctx context.Context, db *sql.DB) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()

	var version int
	if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		return err
	}
	if version > len(migrations) {
		return fmt.Errorf("schema version %d is newer than this build knows (%d); upgrade berth", version, len(migrations))
	}
	if version == len(migrations) {
		return nil
	}
	for i := version; i < len(migrations); i++ {
		if _, err := tx.ExecContext(ctx, migrations[i]); err != nil {
			return fmt.Errorf("to version %d: %w", i+1, err)
		}
	}
	// PRAGMA takes no bound parameters; the value is our own integer.
	if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", len(migrations))); err != nil {
		return err
	}
	return tx.Commit()
}
