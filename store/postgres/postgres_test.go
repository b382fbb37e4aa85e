package postgres_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/store"
	"github.com/berthhq/berth/store/postgres"
	"github.com/berthhq/berth/store/postgres/pgtest"
	"github.com/berthhq/berth/store/storetest"
	"github.com/jackc/pgx/v5"
)

func testURL(t *testing.T) string { return pgtestURL(t) }

func pgtestURL(tb testing.TB) string { return pgtest.URL(tb, "berth_storetest") }

func open(t *testing.T, dsn string) *postgres.Store {
	t.Helper()
	s, err := postgres.Open(t.Context(), dsn)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func TestStore(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return open(t, testURL(t)) })
}

func TestStore_Reopen(t *testing.T) {
	dsn := testURL(t)
	storetest.RunReopen(t, func(t *testing.T) store.Store { return open(t, dsn) })
}

// Replicas starting at once on an empty database all open it, and the
// schema is applied once: each version recorded once, none skipped.
func TestOpen_Concurrent(t *testing.T) {
	dsn := testURL(t)
	const n = 4
	var (
		wg    sync.WaitGroup
		start = make(chan struct{})
		errs  [n]error
	)
	for i := range n {
		wg.Go(func() {
			<-start
			s, err := postgres.Open(t.Context(), dsn)
			if err == nil {
				s.Close()
			}
			errs[i] = err
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Open %d: %v", i, err)
		}
	}
	conn, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var rows, distinct, latest int
	if err := conn.QueryRow(t.Context(), `SELECT count(*), count(DISTINCT version), max(version)
		FROM berth_schema_version`).Scan(&rows, &distinct, &latest); err != nil {
		t.Fatal(err)
	}
	if rows != latest || distinct != latest || latest < 1 {
		t.Errorf("berth_schema_version: %d rows, %d versions, latest %d; want each of 1..latest once", rows, distinct, latest)
	}
	// And the store works.
	s := open(t, dsn)
	defer s.Close()
	if _, created, err := s.CreateBackend(t.Context(), &berth.Backend{ID: "bk_1", Key: "doc-1"}); err != nil || !created {
		t.Errorf("CreateBackend after concurrent opens: created %v, %v", created, err)
	}
}

// A database written by a newer berth is refused rather than misread.
func TestOpen_NewerSchema(t *testing.T) {
	dsn := testURL(t)
	open(t, dsn).Close()
	pgtest.Exec(t, dsn, "INSERT INTO berth_schema_version (version) VALUES (99)")
	s, err := postgres.Open(t.Context(), dsn)
	if err == nil {
		s.Close()
		t.Fatal("Open of a newer schema: no error")
	}
	if !strings.Contains(err.Error(), "schema version 99 is newer") || !strings.HasPrefix(err.Error(), "postgres: ") {
		t.Errorf("Open of a newer schema: %v; want a postgres: error saying version 99 is newer", err)
	}
}

func TestOpen_PoolBound(t *testing.T) {
	dsn := testURL(t)
	s := open(t, dsn)
	defer s.Close()
	if got := s.MaxConns(); got != 8 {
		t.Errorf("default pool bound = %d; want 8", got)
	}
	s2 := open(t, dsn+"&pool_max_conns=2")
	defer s2.Close()
	if got := s2.MaxConns(); got != 2 {
		t.Errorf("pool bound with pool_max_conns=2 = %d; want 2", got)
	}
}

func TestOpen_Unreachable(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	// Port 1 on loopback: nothing listens, so the connect fails at once.
	s, err := postgres.Open(ctx, "postgres://berth:s3cret@127.0.0.1:1/berth?connect_timeout=5")
	if err == nil {
		s.Close()
		t.Fatal("Open of an unreachable server: no error")
	}
	if !strings.HasPrefix(err.Error(), "postgres: ") || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("Open of an unreachable server: %v; want a postgres: error without the password", err)
	}
}

func TestStore_AddEvent(t *testing.T) {
	ctx := t.Context()
	s := open(t, testURL(t))
	defer s.Close()
	b := &berth.Backend{ID: "bk_1", Key: "doc-1", CreatedAt: time.Now()}
	if _, _, err := s.CreateBackend(ctx, b); err != nil {
		t.Fatal(err)
	}
	if err := s.AddEvent(ctx, "bk_1", "pulling image"); err != nil {
		t.Fatal(err)
	}
	// Text PostgreSQL would refuse is made storable, not refused: the
	// event may record a terminated backend.
	if _, err := s.Transition(ctx, "bk_1", store.Transition{To: berth.StateTerminated, Message: "bad\x00\xffbytes"}); err != nil {
		t.Fatal(err)
	}
	es, err := s.Events(ctx, "bk_1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 3 || es[1].State != berth.StateScheduled || es[1].Message != "pulling image" ||
		es[2].Message != "bad\uFFFDbytes" {
		t.Errorf("events = %+v; want scheduled, the note in state scheduled, then terminated with the message cleaned", es)
	}
	if err := s.AddEvent(ctx, "bk_missing", "x"); !errors.Is(err, berth.ErrNotFound) {
		t.Errorf("AddEvent of a missing backend: %v, want ErrNotFound", err)
	}
}

func next(t *testing.T, ch <-chan store.Change) store.Change {
	t.Helper()
	select {
	case c, ok := <-ch:
		if !ok {
			t.Fatal("the feed closed")
		}
		return c
	case <-time.After(15 * time.Second):
		t.Fatal("no change within 15s")
	}
	return store.Change{}
}

// A replica hears the changes another one commits; when its listening
// connection is cut it reconnects and tells its watchers to resync.
func TestStore_WatchAcrossReplicas(t *testing.T) {
	ctx := t.Context()
	dsn := testURL(t)
	a, b := open(t, dsn), open(t, dsn)
	defer a.Close()
	defer b.Close()
	ch, err := a.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.CreateBackend(ctx, &berth.Backend{ID: "bk_1", Key: "doc-1", Node: "node-b", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if c := next(t, ch); c.BackendID != "bk_1" || c.State != berth.StateScheduled || c.Node != "node-b" || c.Key != "doc-1" || c.Seq <= 0 {
		t.Fatalf("change = %+v; want bk_1 scheduled on node-b", c)
	}
	if err := b.AddEvent(ctx, "bk_1", "pulling"); err != nil {
		t.Fatal(err)
	}
	if c := next(t, ch); c.BackendID != "bk_1" || c.State != berth.StateScheduled {
		t.Fatalf("change after AddEvent = %+v; want bk_1 scheduled", c)
	}

	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var cut int
	err = conn.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE application_name = 'berth listen ' || (SELECT 'berth_changes_' || oid FROM pg_namespace WHERE nspname = current_schema())`).Scan(&cut)
	if err != nil || cut != 1 {
		t.Fatalf("cut %d listening connections (%v), want 1", cut, err)
	}
	// Committed while nobody may listen: heard, or covered by the Resync.
	if _, err := b.Transition(ctx, "bk_1", store.Transition{To: berth.StateReady}); err != nil {
		t.Fatal(err)
	}
	for c := next(t, ch); !c.Resync; c = next(t, ch) {
		if c.BackendID != "bk_1" || c.State != berth.StateReady {
			t.Fatalf("change = %+v before the Resync; want bk_1 ready or a Resync", c)
		}
	}
	if _, err := b.Transition(ctx, "bk_1", store.Transition{To: berth.StateTerminated}); err != nil {
		t.Fatal(err)
	}
	if c := next(t, ch); c.BackendID != "bk_1" || c.State != berth.StateTerminated {
		t.Fatalf("change after reconnecting = %+v; want bk_1 terminated", c)
	}
}
