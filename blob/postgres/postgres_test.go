package postgres_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/berthhq/berth/blob"
	"github.com/berthhq/berth/blob/blobtest"
	"github.com/berthhq/berth/blob/postgres"
)

// testURL returns the database from .ci/services.sh, with search_path set
// to a schema of this test's own (dropped at the end), so runs do not meet.
func testURL(t testing.TB) string {
	t.Helper()
	var raw string
	if tt, ok := t.(*testing.T); ok {
		raw = blobtest.Env(tt, "BERTH_TEST_POSTGRES_URL")[0]
	} else if raw = os.Getenv("BERTH_TEST_POSTGRES_URL"); raw == "" {
		t.Skip("BERTH_TEST_POSTGRES_URL is not set: run `source .ci/services.sh` first")
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, raw)
	if err != nil {
		t.Fatalf("connect to %s: %v", raw, err)
	}
	defer conn.Close(ctx)
	schema := fmt.Sprintf("berth_blobtest_%08x", rand.Uint32())
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn, err := pgx.Connect(ctx, raw)
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP SCHEMA "+schema+" CASCADE"); err != nil {
			t.Error(err)
		}
	})
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

func TestStore(t *testing.T) {
	dsn := testURL(t)
	blobtest.Run(t, func(t *testing.T, opts blob.Options) blob.Store {
		s, err := postgres.Open(context.Background(), dsn, opts)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

// TestStore_SmallChunks runs the suite with tiny chunks, so that even small
// bodies span many rows and chunk boundaries get exercised.
func TestStore_SmallChunks(t *testing.T) {
	dsn := testURL(t)
	blobtest.Suite{
		LargeSize: 4 << 20,
		Open: func(t *testing.T, opts blob.Options) blob.Store {
			s, err := postgres.Open(context.Background(), dsn+"&chunk_kb=7", opts)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		},
	}.Run(t)
}

func TestOpen_PoolBound(t *testing.T) {
	dsn := testURL(t)
	ctx := context.Background()
	s, err := postgres.Open(ctx, dsn, blob.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := s.MaxConns(); got != 4 {
		t.Errorf("default pool bound = %d; want 4", got)
	}
	s2, err := postgres.Open(ctx, dsn+"&pool_max_conns=2", blob.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if got := s2.MaxConns(); got != 2 {
		t.Errorf("pool bound with pool_max_conns=2 = %d; want 2", got)
	}
	if _, err := postgres.Open(ctx, dsn+"&chunk_kb=x", blob.Options{}); err == nil || !strings.Contains(err.Error(), "chunk_kb") {
		t.Errorf("Open with chunk_kb=x: err = %v; want one naming chunk_kb", err)
	}
}
