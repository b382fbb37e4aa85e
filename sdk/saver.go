package sdk

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"
)

// Saver saves a backend's state every Interval when it changed, and once
// more when its context ends (SIGTERM).
//
//	s := &sdk.Saver{Client: c, Snapshot: doc.Bytes, Interval: 5 * time.Second}
//	go s.Run(ctx)      // ctx from signal.NotifyContext(…, SIGTERM, SIGINT)
//	…
//	s.Changed()        // after every edit
//	…
//	err := s.Wait()    // after ctx ends: the final save's outcome
type Saver struct {
	Client *Client
	// Snapshot returns the current state; it must be safe to call from
	// another goroutine.
	Snapshot func() []byte
	Interval time.Duration
	Logger   *slog.Logger

	mu      sync.Mutex
	dirty   bool
	done    chan struct{}
	final   error
	started sync.Once
}

// Changed marks the state as changed since the last save.
func (s *Saver) Changed() {
	s.mu.Lock()
	s.dirty = true
	s.mu.Unlock()
}

func (s *Saver) init() { s.started.Do(func() { s.done = make(chan struct{}) }) }

// Run saves periodically until ctx ends, then makes the final save (with
// its own deadline) if anything changed, and returns its error.
func (s *Saver) Run(ctx context.Context) error {
	s.init()
	defer close(s.done)
	every := s.Interval
	if every <= 0 {
		every = 30 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			if err := s.saveIfDirty(ctx); err != nil && s.Logger != nil {
				s.Logger.Warn("periodic save failed; will retry", "err", err)
			}
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			s.final = s.saveIfDirty(fctx)
			return s.final
		}
	}
}

// Wait blocks until Run has made its final save, and returns its error.
func (s *Saver) Wait() error {
	s.init()
	<-s.done
	return s.final
}

func (s *Saver) saveIfDirty(ctx context.Context) error {
	s.mu.Lock()
	dirty := s.dirty
	s.dirty = false
	s.mu.Unlock()
	if !dirty {
		return nil
	}
	err := s.Client.Save(ctx, s.Snapshot())
	if err != nil && !errors.Is(err, ErrFenced) {
		s.Changed() // keep it dirty so the next tick tries again
	}
	return err
}
