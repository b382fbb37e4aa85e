package docker

import (
	"context"
	"io"
	"time"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/client"
)

// drainTimeout bounds how long Wait lets the log stream catch up after the
// container exited, so the last lines land before Berth moves on.
const drainTimeout = 2 * time.Second

// follower copies one container's output into a Spec.Logs.
type follower struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// follow streams container id's stdout and stderr, from its start, into w
// until the container stops, Cleanup or Close. It replaces an earlier
// follower of the same container.
func (r *Runtime) follow(id string, w io.Writer) {
	if w == nil {
		return
	}
	ctx, cancel := context.WithCancel(r.ctx)
	f := &follower{cancel: cancel, done: make(chan struct{})}
	r.mu.Lock()
	old := r.follows[id]
	r.follows[id] = f
	r.mu.Unlock()
	if old != nil {
		old.cancel()
		<-old.done
	}
	r.wg.Go(func() {
		defer func() {
			cancel()
			r.mu.Lock()
			if r.follows[id] == f {
				delete(r.follows, id)
			}
			r.mu.Unlock()
			close(f.done)
		}()
		rc, err := r.cli.ContainerLogs(ctx, id, client.ContainerLogsOptions{ShowStdout: true, ShowStderr: true, Follow: true})
		if err != nil {
			if ctx.Err() == nil {
				r.log.Warn("follow logs", "container", id, "err", err)
			}
			return
		}
		defer rc.Close()
		// Both streams go to one writer: Berth keeps them interleaved as the
		// engine recorded them.
		if _, err := stdcopy.StdCopy(w, w, rc); err != nil && ctx.Err() == nil {
			r.log.Warn("follow logs", "container", id, "err", err)
		}
	})
}

// drain waits, briefly, for container id's log stream to end.
func (r *Runtime) drain(ctx context.Context, id string) {
	r.mu.Lock()
	f := r.follows[id]
	r.mu.Unlock()
	if f == nil {
		return
	}
	t := time.NewTimer(drainTimeout)
	defer t.Stop()
	select {
	case <-f.done:
	case <-t.C:
	case <-ctx.Done():
	}
}

// unfollow stops following container id and waits for the follower to end.
func (r *Runtime) unfollow(id string) {
	r.mu.Lock()
	f := r.follows[id]
	delete(r.follows, id)
	r.mu.Unlock()
	if f != nil {
		f.cancel()
		<-f.done
	}
}
