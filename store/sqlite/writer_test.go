package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

// openTest opens a store in a temporary directory with one extra table for
// the writer's tests.
func openTest(t *testing.T) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "berth.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if _, err := s.w.Exec(`CREATE TABLE t (k TEXT PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	return s
}

func insert(k string) writeFunc {
	return func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO t (k) VALUES (?)`, k)
		return err
	}
}

func rows(t *testing.T, s *Store) map[string]bool {
	t.Helper()
	rs, err := s.r.Query(`SELECT k FROM t`)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	got := map[string]bool{}
	for rs.Next() {
		var k string
		if err := rs.Scan(&k); err != nil {
			t.Fatal(err)
		}
		got[k] = true
	}
	if err := rs.Err(); err != nil {
		t.Fatal(err)
	}
	return got
}

// hold occupies the writer with a write that waits for release, so that the
// writes queued meanwhile are committed together in the next transaction.
func hold(t *testing.T, w *writer) (release func()) {
	t.Helper()
	running, unblock := make(chan struct{}), make(chan struct{})
	errC := make(chan error, 1)
	go func() {
		errC <- w.do(context.Background(), func(ctx context.Context, tx *sql.Tx) error {
			close(running)
			<-unblock
			return nil
		})
	}()
	<-running
	return func() {
		close(unblock)
		if err := <-errC; err != nil {
			t.Errorf("the holding write: %v", err)
		}
	}
}

// queue starts fns as concurrent callers and waits until all are queued.
func queue(t *testing.T, w *writer, fns []writeFunc) (wait func() []error) {
	t.Helper()
	errs := make([]error, len(fns))
	before := w.queued.Load()
	var wg sync.WaitGroup
	for i, fn := range fns {
		wg.Go(func() { errs[i] = w.do(context.Background(), fn) })
	}
	for w.queued.Load() < before+int64(len(fns)) {
		// The callers are blocked until the held write ends; wait for
		// them to be queued, in any order.
		runtime.Gosched()
	}
	return func() []error { wg.Wait(); return errs }
}

func TestWriter_BatchFailsOnlyTheFailingWrite(t *testing.T) {
	s := openTest(t)
	if _, err := s.w.Exec(`INSERT INTO t (k) VALUES ('taken')`); err != nil {
		t.Fatal(err)
	}
	var (
		mu  sync.Mutex
		txs = map[*sql.Tx]bool{}
	)
	seen := func(fn writeFunc) writeFunc {
		return func(ctx context.Context, tx *sql.Tx) error {
			mu.Lock()
			txs[tx] = true
			mu.Unlock()
			return fn(ctx, tx)
		}
	}
	errOwn := errors.New("refused by the write itself")
	release := hold(t, s.wr)
	fns := []writeFunc{
		seen(insert("a")),
		// Changes something, then fails: its change must be undone.
		seen(func(ctx context.Context, tx *sql.Tx) error {
			if err := insert("half")(ctx, tx); err != nil {
				return err
			}
			return errOwn
		}),
		seen(insert("taken")), // a constraint error from SQLite
		seen(insert("b")),
	}
	wait := queue(t, s.wr, fns)
	release()
	errs := wait()

	if len(txs) != 1 {
		t.Errorf("the queued writes ran in %d transactions, want 1", len(txs))
	}
	for i, want := range []error{nil, errOwn, nil, nil} {
		switch {
		case i == 2:
			if errs[i] == nil {
				t.Errorf("write %d (duplicate key): no error", i)
			}
		case !errors.Is(errs[i], want) || (want == nil && errs[i] != nil):
			t.Errorf("write %d: %v, want %v", i, errs[i], want)
		}
	}
	got := rows(t, s)
	for k, want := range map[string]bool{"a": true, "b": true, "taken": true, "half": false} {
		if got[k] != want {
			t.Errorf("row %q stored: %v, want %v", k, got[k], want)
		}
	}
}

func TestWriter_FailedCommitFailsTheWholeBatch(t *testing.T) {
	s := openTest(t)
	release := hold(t, s.wr)
	fns := []writeFunc{
		insert("a"),
		// keys.holder is a deferred foreign key: the statement succeeds
		// and the commit fails.
		func(ctx context.Context, tx *sql.Tx) error {
			_, err := tx.ExecContext(ctx, `INSERT INTO keys (key, fencing, holder) VALUES ('k', 1, 'bk_missing')`)
			return err
		},
		insert("b"),
	}
	wait := queue(t, s.wr, fns)
	release()
	for i, err := range wait() {
		if err == nil {
			t.Errorf("write %d: no error from a batch whose commit failed", i)
		}
	}
	if got := rows(t, s); len(got) != 0 {
		t.Errorf("rows after a failed commit: %v, want none", got)
	}
	// The writer goes on.
	if err := s.wr.do(t.Context(), insert("c")); err != nil {
		t.Fatal(err)
	}
	if got := rows(t, s); !got["c"] {
		t.Errorf("rows %v, want c", got)
	}
}

func TestWriter_Order(t *testing.T) {
	s := openTest(t)
	// One caller's writes take effect in its order, batched or not.
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 20 {
				k := fmt.Sprintf("%d", g)
				err := s.wr.do(context.Background(), func(ctx context.Context, tx *sql.Tx) error {
					if i == 0 {
						return insert(k+"-0")(ctx, tx)
					}
					res, err := tx.ExecContext(ctx, `UPDATE t SET k = ? WHERE k = ?`, fmt.Sprintf("%s-%d", k, i), fmt.Sprintf("%s-%d", k, i-1))
					if err != nil {
						return err
					}
					if n, _ := res.RowsAffected(); n != 1 {
						return fmt.Errorf("write %d of %s: previous write not seen", i, k)
					}
					return nil
				})
				if err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if got := rows(t, s); len(got) != 8 || !got["3-19"] {
		t.Errorf("rows %v, want 8 ending in -19", got)
	}
}

func TestWriter_CancelWhileQueued(t *testing.T) {
	s := openTest(t)
	release := hold(t, s.wr)
	ctx, cancel := context.WithCancel(t.Context())
	errC := make(chan error, 1)
	go func() { errC <- s.wr.do(ctx, insert("never")) }()
	for s.wr.queued.Load() == 0 {
		runtime.Gosched()
	}
	cancel()
	if err := <-errC; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled while queued: %v, want context.Canceled", err)
	}
	release()
	// A later write still runs, and the abandoned one never did.
	if err := s.wr.do(t.Context(), insert("later")); err != nil {
		t.Fatal(err)
	}
	if got := rows(t, s); got["never"] || !got["later"] {
		t.Errorf("rows %v, want only later", got)
	}
}

func TestWriter_Close(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "berth.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.wr.do(t.Context(), insert("x")); !errors.Is(err, errClosed) {
		t.Errorf("write after Close: %v, want errClosed", err)
	}
}
