package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/store"
)

const (
	// listenPing is how long the listener waits for a notification before
	// it checks its connection: a connection cut silently (a partition)
	// would otherwise leave it deaf without an error.
	listenPing = 5 * time.Second
	// listenRetry is the pause before the listener reconnects.
	listenRetry = time.Second
)

// Watch implements store.Store. The first call starts the listener (one
// connection of its own, outside the pool) and returns once it listens, or
// with ctx's error. The listener reconnects after any failure and then
// sends every watcher a Resync.
func (s *Store) Watch(ctx context.Context) (<-chan store.Change, error) {
	s.listen.Do(func() {
		lctx, cancel := context.WithCancel(context.Background())
		s.stop = cancel
		s.listenWG.Add(1)
		go func() {
			defer s.listenWG.Done()
			defer close(s.stopped)
			s.listenLoop(lctx)
		}()
	})
	select {
	case <-s.ready:
		return s.feed.Watch(ctx), nil
	case <-s.stopped:
		return nil, errors.New("postgres: watch: store is closed")
	case <-ctx.Done():
		return nil, fmt.Errorf("postgres: watch: %w", ctx.Err())
	}
}

// listenLoop keeps a connection LISTENing until ctx ends.
func (s *Store) listenLoop(ctx context.Context) {
	first := true
	for {
		s.listenOn(ctx, func() {
			if first {
				close(s.ready)
				first = false
			} else {
				// Notifications sent while no connection listened are lost.
				s.feed.Resync()
			}
		})
		if ctx.Err() != nil {
			return
		}
		select {
		case <-time.After(listenRetry):
		case <-ctx.Done():
			return
		}
	}
}

// listenOn connects, LISTENs, calls listening, then publishes what it
// hears until the connection fails or ctx ends. Its error only says why it
// returned: the loop retries whatever it was.
func (s *Store) listenOn(ctx context.Context, listening func()) error {
	cfg := s.pool.Config().ConnConfig.Copy()
	// Named for operators (and tests) in pg_stat_activity.
	cfg.RuntimeParams["application_name"] = "berth listen " + s.channel
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{s.channel}.Sanitize()); err != nil {
		return err
	}
	listening()
	for {
		wctx, cancel := context.WithTimeout(ctx, listenPing)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case err == nil:
			var p struct {
				Seq   int64  `json:"seq"`
				ID    string `json:"id"`
				Key   string `json:"key"`
				Node  string `json:"node"`
				State string `json:"state"`
			}
			if err := json.Unmarshal([]byte(n.Payload), &p); err != nil {
				// Not ours (someone else NOTIFYs on the channel): re-read.
				s.feed.Resync()
				continue
			}
			s.feed.Publish(store.Change{Seq: p.Seq, BackendID: p.ID, Key: p.Key, Node: p.Node, State: berth.State(p.State)})
		case ctx.Err() != nil:
			return ctx.Err()
		case wctx.Err() != nil && !conn.IsClosed():
			pctx, cancel := context.WithTimeout(ctx, listenPing)
			err := conn.Ping(pctx)
			cancel()
			if err != nil {
				return err
			}
		default:
			return err
		}
	}
}
