package postgres_test

import (
	"bytes"
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/berthhq/berth/blob"
	"github.com/berthhq/berth/blob/blobtest"
	"github.com/berthhq/berth/blob/postgres"
)

func benchStore(b *testing.B) *postgres.Store {
	s, err := postgres.Open(context.Background(), testURL(b), blob.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

func BenchmarkPut(b *testing.B) { blobtest.BenchPut(b, benchStore(b)) }
func BenchmarkGet(b *testing.B) { blobtest.BenchGet(b, benchStore(b)) }

// rawConn is one plain connection with a one-row table: the baseline.
func rawConn(b *testing.B) *pgx.Conn {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, testURL(b))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close(ctx) })
	if _, err := conn.Exec(ctx, `CREATE TABLE raw_bench (id int PRIMARY KEY, data bytea NOT NULL)`); err != nil {
		b.Fatal(err)
	}
	return conn
}

// BenchmarkRawPut is the baseline for BenchmarkPut: the same bytes upserted
// as one bytea value in one statement (which needs the whole body in
// memory — what the store avoids).
func BenchmarkRawPut(b *testing.B) {
	conn := rawConn(b)
	ctx := context.Background()
	for _, size := range blobtest.BenchSizes {
		b.Run(blobtest.SizeName(size), func(b *testing.B) {
			data := blobtest.BenchBody(size)
			b.SetBytes(int64(size))
			for b.Loop() {
				if _, err := conn.Exec(ctx, `INSERT INTO raw_bench VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET data = EXCLUDED.data`, data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkRawGet is the baseline for BenchmarkGet: one SELECT of the value.
func BenchmarkRawGet(b *testing.B) {
	conn := rawConn(b)
	ctx := context.Background()
	for _, size := range blobtest.BenchSizes {
		b.Run(blobtest.SizeName(size), func(b *testing.B) {
			data := blobtest.BenchBody(size)
			if _, err := conn.Exec(ctx, `INSERT INTO raw_bench VALUES (2, $1) ON CONFLICT (id) DO UPDATE SET data = EXCLUDED.data`, data); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(size))
			var got []byte
			for b.Loop() {
				if err := conn.QueryRow(ctx, `SELECT data FROM raw_bench WHERE id = 2`).Scan(&got); err != nil || !bytes.Equal(got[:16], data[:16]) {
					b.Fatal(err)
				}
			}
		})
	}
}
