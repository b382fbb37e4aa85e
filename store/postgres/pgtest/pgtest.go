// Package pgtest gives tests a PostgreSQL database of their own: the server
// .ci/services.sh starts, with search_path set to a new schema that is
// dropped when the test ends, so tests run in parallel and again without
// meeting each other's tables. It is for tests only and never creates
// anything outside that schema.
package pgtest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"
)

// URL returns the test server's URL with search_path set to a new schema
// named prefix_<random>. Without BERTH_TEST_POSTGRES_URL it fails the test
// when CI is set, and otherwise skips it, saying how to get the server.
func URL(t testing.TB, prefix string) string {
	t.Helper()
	raw := os.Getenv("BERTH_TEST_POSTGRES_URL")
	if raw == "" {
		msg := "BERTH_TEST_POSTGRES_URL is not set: run `source .ci/services.sh` from the repository root " +
			"(it starts PostgreSQL on loopback and exports it), then run the tests again"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	schema := fmt.Sprintf("%s_%08x", prefix, rand.Uint32())
	Exec(t, raw, "CREATE SCHEMA "+schema)
	t.Cleanup(func() { Exec(t, raw, "DROP SCHEMA "+schema+" CASCADE") })
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

// Exec runs one statement on a connection of its own.
func Exec(t testing.TB, dsn, sql string, args ...any) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}
