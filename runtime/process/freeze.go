package process

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/berthhq/berth/runtime"
	"golang.org/x/sys/unix"
)

var _ runtime.Freezer = (*Runtime)(nil)

// Freeze freezes the backend: through its cgroup's cgroup.freeze (cgroup
// v2) when it has one, which reaches every process in the cgroup and is
// invisible to them; otherwise by SIGSTOP to its process group, which
// reaches every process of the group (one that left the group is not
// frozen; its parent sees it stopped, as for a job-control stop). It
// returns once every process is frozen.
//
// A cgroup v1 freezer hierarchy (freezer.state) is not used: the runtime
// makes cgroups only in a delegated v2 directory, because v1 gives no way
// to start a process inside a cgroup (CLONE_INTO_CGROUP is v2 only),
// moving a running group into one races with its forks, and a task v1
// froze ignores SIGKILL until thawed, which the parent-death signal and a
// replica's reaper rely on.
func (r *Runtime) Freeze(ctx context.Context, h *runtime.Handle) error {
	inst, err := r.instance(h)
	if err != nil {
		return err
	}
	if inst.finished() || inst.reused() {
		return runtime.ErrGone
	}
	if cg := inst.st.Cgroup; cg != "" {
		if err := writeCgroup(cg, "cgroup.freeze", "1"); err != nil {
			return fmt.Errorf("process: freeze %s: %w", h.BackendID, err)
		}
		return waitFrozen(ctx, "freeze "+h.BackendID, func() (bool, error) { return cgroupFrozen(cg, true) })
	}
	if err := unix.Kill(-inst.st.PGID, unix.SIGSTOP); err != nil {
		if err == unix.ESRCH {
			return runtime.ErrGone
		}
		return fmt.Errorf("process: freeze %s: signal process group %d: %w", h.BackendID, inst.st.PGID, err)
	}
	return waitFrozen(ctx, "freeze "+h.BackendID, func() (bool, error) { return groupStopped(inst.st.PGID, inst.st.Start) })
}

// Thaw undoes Freeze. A backend whose cgroup is not frozen, or whose
// processes are not stopped, is left as it is (SIGCONT to a running
// process does nothing unless it handles SIGCONT).
func (r *Runtime) Thaw(ctx context.Context, h *runtime.Handle) error {
	inst, err := r.instance(h)
	if err != nil {
		return err
	}
	if inst.finished() || inst.reused() {
		return runtime.ErrGone
	}
	if cg := inst.st.Cgroup; cg != "" {
		if err := writeCgroup(cg, "cgroup.freeze", "0"); err != nil {
			return fmt.Errorf("process: thaw %s: %w", h.BackendID, err)
		}
		return waitFrozen(ctx, "thaw "+h.BackendID, func() (bool, error) { return cgroupFrozen(cg, false) })
	}
	// SIGCONT wakes every stopped process of the group before kill(2)
	// returns: nothing to wait for.
	if err := unix.Kill(-inst.st.PGID, unix.SIGCONT); err != nil && err != unix.ESRCH {
		return fmt.Errorf("process: thaw %s: signal process group %d: %w", h.BackendID, inst.st.PGID, err)
	}
	return nil
}

// Memory is the cgroup's memory.current when the memory controller is
// enabled for it, else the sum of the resident set sizes of the process
// group's processes (and the cgroup's).
func (r *Runtime) Memory(ctx context.Context, h *runtime.Handle) (int64, error) {
	inst, err := r.instance(h)
	if err != nil {
		return 0, err
	}
	if cg := inst.st.Cgroup; cg != "" {
		b, err := os.ReadFile(filepath.Join(cg, "memory.current"))
		if err == nil {
			return strconv.ParseInt(string(bytes.TrimSpace(b)), 10, 64)
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return 0, fmt.Errorf("process: memory of %s: %w", h.BackendID, err)
		}
	}
	pids, err := inst.members()
	if err != nil {
		return 0, fmt.Errorf("process: memory of %s: %w", h.BackendID, err)
	}
	seen := make(map[int]bool, len(pids))
	var total int64
	for _, pid := range pids {
		if seen[pid] {
			continue
		}
		seen[pid] = true
		total += rss(pid)
	}
	return total, nil
}

// rss is a process's resident set size in bytes (0 once it is gone).
func rss(pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/statm")
	if err != nil {
		return 0
	}
	f := bytes.Fields(b)
	if len(f) < 2 {
		return 0
	}
	pages, err := strconv.ParseInt(string(f[1]), 10, 64)
	if err != nil {
		return 0
	}
	return pages * int64(os.Getpagesize())
}

// cgroupFrozen reports whether the cgroup dir's cgroup.events says frozen
// is want.
func cgroupFrozen(dir string, want bool) (bool, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
	if err != nil {
		return false, err
	}
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		if v, ok := bytes.CutPrefix(line, []byte("frozen ")); ok {
			return (string(v) == "1") == want, nil
		}
	}
	return false, errors.New("cgroup.events has no frozen line (kernel before 5.2?)")
}

// groupStopped reports whether every process of the group is stopped.
func groupStopped(pgid int, start uint64) (bool, error) {
	pids, err := groupMembers(pgid, start)
	if err != nil {
		return false, err
	}
	for _, pid := range pids {
		s, err := readStat(pid)
		if err != nil {
			continue // exited meanwhile
		}
		if s.running() && s.state != 'T' {
			return false, nil
		}
	}
	return true, nil
}

// waitFrozen polls done until it reports true, an error, or ctx ends; op
// names the operation in errors.
func waitFrozen(ctx context.Context, op string, done func() (bool, error)) error {
	for d := 50 * time.Microsecond; ; d = min(2*d, 20*time.Millisecond) {
		ok, err := done()
		if err != nil {
			return fmt.Errorf("process: %s: %w", op, err)
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("process: %s: %w", op, ctx.Err())
		case <-time.After(d):
		}
	}
}
