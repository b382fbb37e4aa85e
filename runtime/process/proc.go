package process

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// stat is what the runtime reads from /proc/<pid>/stat.
type stat struct {
	state byte   // R, S, D, Z, …
	pgid  int    // field 5
	start uint64 // field 22: start time in clock ticks since boot
}

func readStat(pid int) (stat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return stat{}, err
	}
	// The command name (field 2) is in parentheses and may itself contain
	// spaces and parentheses, so count fields from the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return stat{}, fmt.Errorf("parse /proc/%d/stat: no command name", pid)
	}
	f := bytes.Fields(b[i+1:]) // f[0] is field 3
	if len(f) < 20 {
		return stat{}, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(f)+2)
	}
	pgid, err1 := strconv.Atoi(string(f[2]))
	start, err2 := strconv.ParseUint(string(f[19]), 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return stat{}, fmt.Errorf("parse /proc/%d/stat: %w", pid, err)
	}
	return stat{state: f[0][0], pgid: pgid, start: start}, nil
}

// running reports whether s is a process that has not exited yet (a zombie
// has exited; it only waits for its parent).
func (s stat) running() bool { return s.state != 'Z' && s.state != 'X' && s.state != 'x' }

// alive reports whether pid is still the process that started at start.
func alive(pid int, start uint64) bool {
	s, err := readStat(pid)
	return err == nil && s.start == start && s.running()
}

// groupMembers returns the running processes of process group pgid that
// started no earlier than its leader did (start), i.e. that can be ours.
func groupMembers(pgid int, start uint64) ([]int, error) {
	d, err := os.Open("/proc")
	if err != nil {
		return nil, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, n := range names {
		pid, err := strconv.Atoi(n)
		if err != nil {
			continue
		}
		if s, err := readStat(pid); err == nil && s.pgid == pgid && s.start >= start && s.running() {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// waitExit blocks until the process pid, which started at start, exits, or
// ctx is done. It works for processes that are not our children (recovered
// after a restart), so it cannot learn the exit status. It returns nil once
// the process has exited; a process already gone counts as exited.
func waitExit(ctx context.Context, pid int, start uint64) error {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err != nil {
		return pollExit(ctx, pid, start) // kernel before 5.10, or seccomp
	}
	f := os.NewFile(uintptr(fd), "pidfd")
	defer f.Close()
	// The pidfd was opened before this check, so if pid is still the
	// process that started at start, the pidfd refers to it.
	if !alive(pid, start) {
		return nil
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return pollExit(ctx, pid, start)
	}
	stop := context.AfterFunc(ctx, func() { f.SetReadDeadline(time.Now()) })
	defer stop()
	// A pidfd turns readable when the process exits; the Go poller waits for
	// that without holding a thread.
	err = rc.Read(func(fd uintptr) bool {
		p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(p, 0)
		return err != nil || n > 0
	})
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return ctx.Err()
	}
	return pollExit(ctx, pid, start) // the poller does not support pidfds here
}

// pollExit is waitExit without pidfds.
func pollExit(ctx context.Context, pid int, start uint64) error {
	for d := time.Millisecond; alive(pid, start); d = min(2*d, 100*time.Millisecond) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
		}
	}
	return nil
}
