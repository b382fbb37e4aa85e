package cli

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/berthhq/berth/lease"
	dockerrt "github.com/berthhq/berth/runtime/docker"
)

func init() {
	register("reaper", "ends what a dead replica left running (run by berth serve)", true, runReaper)
}

// A replica's backends must not outlive its Berth: another replica may
// take their keys once the lease expires. The parent-death signal kills the
// process Berth forks for a backend, but not what that process started in
// its group (`sh -c`, gunicorn's workers), and containers cannot be tied
// to a process at all. So a replica starts a reaper beside it: a process of
// its own session, which Berth tells through a pipe of each process group
// it starts and lets go of, and of each lease renewal. When the pipe closes
// without a graceful stop — Berth died — the reaper kills those process
// groups at once (their leaders died with Berth already), and, with the
// Docker runtime, waits until the moment Berth itself would have begun
// stopping its backends (the lease's graceful-stop deadline) and removes
// the containers of Berth's instance: well before the lease can expire.
// A Berth that starts again on the data dir first stops the reaper its
// predecessor left (its pid file), so it re-adopts the containers instead.
// A Berth that stopped gracefully, its backends stopped, says so last: the
// reaper then ends with it (killing any group still named, which should be
// none) instead of outliving it to remove containers that are gone.

const reaperPidFile = "reaper.pid"

// reaper is Berth's end of the pipe; its methods may be called at once.
type reaper struct {
	mu sync.Mutex
	w  *os.File
}

func (r *reaper) say(line string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	io.WriteString(r.w, line+"\n")
}

// renewed tells the reaper that the lease was just renewed.
func (r *reaper) renewed() { r.say("renewed") }

// group tells the reaper of a backend's process group.
func (r *reaper) group(pgid int, running bool) {
	if running {
		r.say("+" + strconv.Itoa(pgid))
	} else {
		r.say("-" + strconv.Itoa(pgid))
	}
}

// docker tells the reaper to remove the containers of the docker runtime's
// instance too.
func (r *reaper) docker(instance string) { r.say("docker " + instance) }

// stopped tells the reaper that Berth stopped every backend and is about
// to exit, and closes the pipe: the reaper ends now. Nothing may be said
// after it.
func (r *reaper) stopped() {
	if r == nil {
		return
	}
	r.say("stopped")
	r.mu.Lock()
	defer r.mu.Unlock()
	r.w.Close()
}

// groupHook is what a process runtime calls on each group (nil without a
// reaper).
func (r *reaper) groupHook() func(pgid int, running bool) {
	if r == nil {
		return nil
	}
	return r.group
}

// startReaper stops a reaper an earlier Berth on this data dir left, and
// starts one.
func startReaper(o *serverOptions, t lease.Timing, log *slog.Logger) (*reaper, error) {
	pidPath := filepath.Join(o.DataDir, reaperPidFile)
	stopOldReaper(pidPath, log)
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer pr.Close()
	// Berth's graceful-stop deadline, counted from before the renewal was
	// sent: the reaper hears of it up to a renewal interval later. A dead
	// Berth saves nothing, so there is no point in waiting longer, and the
	// removal keeps StopBefore (6 s of 15) to finish before the lease can
	// expire; until then a Berth restarted on the data dir re-adopts them.
	after := t.TTL - t.StopBefore - t.RenewInterval
	cmd := exec.Command(exe, "reaper", "--after", after.String())
	cmd.Stdin = pr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // outlives Berth, signals and all
	if err := cmd.Start(); err != nil {
		pw.Close()
		return nil, fmt.Errorf("start the reaper: %w", err)
	}
	if err := os.WriteFile(pidPath, []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o600); err != nil {
		log.Warn("reaper: pid file", "err", err)
	}
	go cmd.Wait()
	r := &reaper{w: pw}
	r.renewed()
	return r, nil
}

// stopOldReaper SIGTERMs the reaper named in pidPath, if that process is a
// reaper still.
func stopOldReaper(pidPath string, log *slog.Logger) {
	b, err := os.ReadFile(pidPath)
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !strings.Contains(string(cmdline), "reaper") {
		return // gone, or the number is another process's now
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err == nil {
		log.Info("stopped the reaper an earlier Berth left", "pid", pid)
	}
}

// runReaper reads Berth's lines on stdin until it closes, then ends what
// Berth left. SIGTERM (a new Berth on the same data dir) ends it without
// touching anything.
func runReaper(ctx context.Context, args []string, stdio Stdio) error {
	fs := newFlags("reaper", "berth reaper --after DURATION", stdio)
	after := fs.Duration("after", 0, "how long after the last renewal to remove the containers")
	if _, err := fs.parse(args); err != nil {
		return err
	}
	if *after <= 0 {
		return usagef("a positive --after is required")
	}
	signal.Ignore(syscall.SIGINT, syscall.SIGHUP) // Berth's terminal is not ours
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)

	var mu sync.Mutex
	groups := map[int]bool{}
	instance := "" // the docker runtime's, once Berth names it
	graceful := false
	last := time.Now()
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		sc := bufio.NewScanner(stdio.In)
		for sc.Scan() {
			line := sc.Text()
			mu.Lock()
			switch {
			case line == "renewed":
				last = time.Now()
			case line == "stopped":
				graceful = true
			case strings.HasPrefix(line, "docker "):
				instance = strings.TrimPrefix(line, "docker ")
			case len(line) > 1 && (line[0] == '+' || line[0] == '-'):
				if pgid, err := strconv.Atoi(line[1:]); err == nil && pgid > 1 {
					if line[0] == '+' {
						groups[pgid] = true
					} else {
						delete(groups, pgid)
					}
				}
			}
			mu.Unlock()
		}
	}()
	select {
	case <-term:
		return nil
	case <-closed:
	}
	mu.Lock()
	for pgid := range groups {
		syscall.Kill(-pgid, syscall.SIGKILL) // never 0 or -1: pgid > 1
	}
	if n := len(groups); n > 0 {
		fmt.Fprintf(stdio.Err, "reaper: killed %d process groups, whose Berth ended\n", n)
	}
	deadline := last.Add(*after)
	docker := instance
	stopped := graceful
	mu.Unlock()
	if docker == "" || stopped {
		return nil // a Berth that stopped gracefully removed its containers itself
	}
	select {
	case <-term:
		return nil
	case <-time.After(time.Until(deadline)):
	}
	// Until they are all gone, or a minute has passed: an engine that
	// refuses one removal may take the next.
	rctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for {
		n, err := dockerrt.Reap(rctx, "", docker)
		if n > 0 {
			fmt.Fprintf(stdio.Err, "reaper: removed %d containers of %s, whose Berth died\n", n, docker)
		}
		if err == nil || rctx.Err() != nil {
			return err
		}
		fmt.Fprintln(stdio.Err, "reaper:", err)
		time.Sleep(200 * time.Millisecond)
	}
}
