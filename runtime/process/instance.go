package process

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/berthhq/berth/runtime"
	"golang.org/x/sys/unix"
)

// instance is one backend process group, started by this Runtime or
// attached to after a restart. One goroutine watches the leader and ends
// with it: cmd.Wait for a child, a pidfd otherwise.
type instance struct {
	st   state
	done chan struct{} // closed once the leader has exited and its output is copied
	exit runtime.Exit  // set before done is closed

	// child is set for a process this Runtime started: until cmd.Wait has
	// reaped the leader (reaped), its pid, and so the group id, cannot
	// name another process, so reused need not read /proc to tell. (Like
	// the read, this is a check before a kill(2): a reap in between would
	// need the pid numbers to wrap around before the kill to matter.)
	child  bool
	reaped atomic.Bool

	mu     sync.Mutex
	tail   *tail
	exited bool // the leader has exited: start no tail
}

func newInstance(st state) *instance {
	return &instance{st: st, done: make(chan struct{})}
}

// attach watches a process this Runtime did not start. A process that is
// gone yields an instance that has already ended with runtime.ErrGone.
func attach(st state) *instance {
	i := newInstance(st)
	if !alive(st.PID, st.Start) {
		i.exited = true
		i.exit = runtime.Exit{Code: -1, Err: runtime.ErrGone, At: time.Now()}
		close(i.done)
		return i
	}
	go func() {
		waitExit(context.Background(), st.PID, st.Start) // fails only when its context ends
		i.finish(runtime.Exit{Code: -1, Err: errUnknownExit})
	}()
	return i
}

// finish records how the leader ended, once the output is copied.
func (i *instance) finish(e runtime.Exit) {
	e.At = time.Now()
	i.mu.Lock()
	i.exited = true
	t := i.tail
	i.mu.Unlock()
	if t != nil {
		t.close()
	}
	if i.st.Cgroup != "" && oomKilled(i.st.Cgroup) {
		e.OOMKilled = true
	}
	i.exit = e
	close(i.done)
}

// finished reports whether done is closed.
func (i *instance) finished() bool {
	select {
	case <-i.done:
		return true
	default:
		return false
	}
}

// follow starts copying the output log into w unless it is already being
// copied. It reports false when the instance has ended.
func (i *instance) follow(w io.Writer, r *Runtime, log *slog.Logger) bool {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.exited {
		return false
	}
	if i.tail != nil || w == nil {
		return true
	}
	t, err := startTail(i.st.Log, w, r.maxLog, &r.watch, log)
	if err != nil {
		log.Error("cannot capture output", "err", err)
		return true
	}
	i.tail = t
	return true
}

// reused reports whether the leader's pid now names another process, which
// means the group is gone and its id free for others.
func (i *instance) reused() bool {
	if i.child && !i.reaped.Load() {
		return false
	}
	s, err := readStat(i.st.PID)
	return err == nil && s.start != i.st.Start
}

// signal sends sig to the process group, and for SIGKILL also kills the
// cgroup, unless the group is provably gone.
func (i *instance) signal(sig unix.Signal) error {
	if i.reused() {
		return nil
	}
	if sig == unix.SIGKILL && i.st.Cgroup != "" {
		// Linux 5.14 and later; older kernels rely on the group kill below.
		writeCgroup(i.st.Cgroup, "cgroup.kill", "1")
	}
	if err := unix.Kill(-i.st.PGID, sig); err != nil && err != unix.ESRCH {
		return fmt.Errorf("signal process group %d: %w", i.st.PGID, err)
	}
	return nil
}

// kill SIGKILLs the group, waits for the leader to exit, then until no
// process of the group (or cgroup) runs any more.
func (i *instance) kill(ctx context.Context) error {
	if err := i.signal(unix.SIGKILL); err != nil {
		return err
	}
	select {
	case <-i.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	deadline := time.Now().Add(killTimeout)
	for d := time.Millisecond; ; d = min(2*d, 50*time.Millisecond) {
		left, err := i.members()
		if err != nil || len(left) == 0 {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v survive SIGKILL", left)
		}
		if err := i.signal(unix.SIGKILL); err != nil {
			return err
		}
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// members lists the running processes of the group and the cgroup.
func (i *instance) members() ([]int, error) {
	// Usually the group is empty once the leader is gone: one kill(2) says
	// so, sparing a scan of all of /proc on every stop (and, an empty group
	// being empty whoever had its id, the read of the leader's stat).
	if i.st.Cgroup == "" && unix.Kill(-i.st.PGID, 0) == unix.ESRCH {
		return nil, nil
	}
	if i.reused() {
		return nil, nil
	}
	pids, err := groupMembers(i.st.PGID, i.st.Start)
	if err != nil {
		return nil, err
	}
	if i.st.Cgroup != "" {
		cg, err := cgroupProcs(i.st.Cgroup)
		if err != nil {
			return nil, err
		}
		for _, pid := range cg {
			if s, err := readStat(pid); err == nil && s.running() {
				pids = append(pids, pid)
			}
		}
	}
	return pids, nil
}
