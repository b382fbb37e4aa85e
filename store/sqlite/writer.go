package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
)

// maxBatch bounds how many writes share one transaction, so a long queue
// is committed in steps and no caller waits for a huge transaction.
const maxBatch = 64

// errClosed is returned by writes after Close.
var errClosed = errors.New("store is closed")

// writeFunc is one write: it runs inside a transaction it must neither
// commit nor roll back, and must not call the Store (the writer is busy
// running it). It returns an error to have its own changes undone.
type writeFunc func(ctx context.Context, tx *sql.Tx) error

// A writer commits the store's writes on its one connection, several at a
// time (group commit): while a transaction runs, the writes that arrive
// queue up, and the writer goroutine takes all of them into the next
// transaction. Under load that turns many small transactions, each with its
// own BEGIN, COMMIT and WAL append, into a few larger ones. A write that
// finds the connection free and nothing queued runs at once in its caller's
// goroutine, in a transaction of its own, as without a writer: an idle
// server pays no hand-off to the writer goroutine and back.
//
// Semantics, per caller:
//   - A caller returns once the transaction holding its write has committed
//     (its write is then as durable as a commit is) or failed.
//   - In a transaction of several writes, each runs under its own savepoint:
//     a write that fails is rolled back alone and fails only its own caller;
//     the others go on and commit.
//   - If the commit itself fails, every write of the transaction fails with
//     that error and none of them is kept.
//   - Writes run in the order they were queued, so a caller's writes take
//     effect in the order it made them.
//   - A caller whose context ends while its write is still queued gets the
//     context's error and the write never runs; once the write has started,
//     the caller waits for its outcome, so an error never hides a write that
//     was committed.
type writer struct {
	db    *sql.DB
	conn  sync.Mutex // held while a transaction runs; for good once closed
	queue chan *writeReq
	quit  chan struct{} // closed by close
	done  chan struct{} // closed when run has returned
	once  sync.Once

	queued  atomic.Int64 // writes ever queued for the writer goroutine (for tests)
	waiting atomic.Int64 // writes queued for the writer goroutine, not yet in a batch

	// Savepoint statements, prepared once.
	save, release, rollbackTo *sql.Stmt
}

// writeReq states.
const (
	reqQueued int32 = iota
	reqTaken
	reqAbandoned
)

type writeReq struct {
	fn    writeFunc
	state atomic.Int32
	err   error         // set before done is closed
	done  chan struct{} // closed when the outcome is known
}

func newWriter(ctx context.Context, db *sql.DB) (*writer, error) {
	w := &writer{
		db:    db,
		queue: make(chan *writeReq, 4*maxBatch),
		quit:  make(chan struct{}),
		done:  make(chan struct{}),
	}
	for _, p := range []struct {
		stmt  **sql.Stmt
		query string
	}{
		{&w.save, "SAVEPOINT write"},
		{&w.release, "RELEASE write"},
		{&w.rollbackTo, "ROLLBACK TO write"},
	} {
		var err error
		if *p.stmt, err = db.PrepareContext(ctx, p.query); err != nil {
			return nil, fmt.Errorf("prepare %q: %w", p.query, err)
		}
	}
	go w.run()
	return w, nil
}

// close stops the writer after the transactions in flight; writes still
// queued fail with errClosed.
func (w *writer) close() {
	w.once.Do(func() {
		close(w.quit)
		<-w.done
		w.conn.Lock() // wait for a caller's own write; refuse later ones
	})
	<-w.done
}

// do runs fn in the next transaction and returns once that transaction has
// committed or failed.
func (w *writer) do(ctx context.Context, fn writeFunc) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if w.waiting.Load() == 0 && w.conn.TryLock() {
		r := &writeReq{fn: fn}
		err := w.exec(context.Background(), []*writeReq{r})
		w.conn.Unlock()
		if r.err != nil {
			return r.err
		}
		return err
	}
	r := &writeReq{fn: fn, done: make(chan struct{})}
	w.waiting.Add(1)
	select {
	case w.queue <- r:
		w.queued.Add(1)
	case <-w.quit:
		w.waiting.Add(-1)
		return errClosed
	case <-ctx.Done():
		w.waiting.Add(-1)
		return ctx.Err()
	}
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		if r.state.CompareAndSwap(reqQueued, reqAbandoned) {
			return ctx.Err()
		}
		<-r.done // started: its outcome is coming
		return r.err
	case <-w.done:
		// The writer has stopped; it finishes every write it took.
		select {
		case <-r.done:
			return r.err
		default:
			return errClosed
		}
	}
}

func (w *writer) run() {
	defer close(w.done)
	batch := make([]*writeReq, 0, maxBatch)
	for {
		select {
		case r := <-w.queue:
			batch = append(batch[:0], r)
		case <-w.quit:
			return
		}
		// What queues while a caller's own write holds the connection
		// joins this batch.
		w.conn.Lock()
	more:
		for len(batch) < maxBatch {
			select {
			case r := <-w.queue:
				batch = append(batch, r)
			default:
				break more
			}
		}
		w.waiting.Add(-int64(len(batch)))
		n := 0
		for _, r := range batch {
			if r.state.CompareAndSwap(reqQueued, reqTaken) {
				batch[n] = r
				n++
			}
		}
		clear(batch[n:])
		batch = batch[:n]
		if n > 0 {
			w.commit(batch)
		}
		w.conn.Unlock()
	}
}

// commit runs batch in one transaction and tells each caller its outcome.
// The caller holds w.conn.
func (w *writer) commit(batch []*writeReq) {
	// The transaction is the writer's, not a caller's: one caller giving up
	// must not roll back the writes of the others.
	err := w.exec(context.Background(), batch)
	for _, r := range batch {
		if r.err == nil {
			r.err = err
		}
		close(r.done)
	}
}

// exec runs batch and commits. It returns an error that fails every write
// of the batch (one left in r.err fails only that write).
func (w *writer) exec(ctx context.Context, batch []*writeReq) error {
	tx, err := w.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if len(batch) == 1 {
		// Alone in its transaction: no savepoint needed.
		r := batch[0]
		if r.err = r.fn(ctx, tx); r.err != nil {
			return nil // rolled back by the deferred Rollback
		}
		return tx.Commit()
	}
	save, release, rollbackTo := tx.Stmt(w.save), tx.Stmt(w.release), tx.Stmt(w.rollbackTo)
	for _, r := range batch {
		if _, err := save.ExecContext(ctx); err != nil {
			return err
		}
		if r.err = r.fn(ctx, tx); r.err != nil {
			if _, err := rollbackTo.ExecContext(ctx); err != nil {
				// SQLite may have rolled back the whole transaction (for
				// example on a full disk): nothing of the batch is kept.
				return err
			}
		}
		if _, err := release.ExecContext(ctx); err != nil {
			return err
		}
	}
	return tx.Commit()
}
