package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/berthhq/berth/lease"
	"github.com/berthhq/berth/runtime/docker"
)

func init() {
	register("docker-reaper", "removes a dead replica's containers (run by berth serve)", true, runDockerReaper)
}

// A replica's process backends die with its Berth (a parent-death signal);
// containers cannot be tied to a process that way. So a replica that runs
// Docker backends starts a reaper beside it: a process of its own session
// that Berth tells, through a pipe, each time it renewed its lease. When
// the pipe closes without Berth having stopped it — Berth died — the reaper
// waits until the moment Berth itself would have begun stopping them (the
// lease's graceful-stop deadline) and removes the containers of Berth's
// instance, well before the lease can expire and another replica take
// their keys. A Berth that starts again on the data dir first stops the
// reaper its predecessor left (its pid file), so it re-adopts the
// containers instead.

const reaperPidFile = "docker-reaper.pid"

// reaper is Berth's end of the pipe.
type reaper struct{ w *os.File }

// renewed tells the reaper that the lease was just renewed.
func (r *reaper) renewed() {
	r.w.Write([]byte{1})
}

// startReaper stops a reaper an earlier Berth on this data dir left, and
// starts one for instance with the lease schedule t.
func startReaper(o *serverOptions, instance string, t lease.Timing, log *slog.Logger) (*reaper, error) {
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
	cmd := exec.Command(exe, "docker-reaper", "--instance", instance, "--after", after.String())
	cmd.Stdin = pr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // outlives Berth, signals and all
	if err := cmd.Start(); err != nil {
		pw.Close()
		return nil, fmt.Errorf("start the docker reaper: %w", err)
	}
	if err := os.WriteFile(pidPath, []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o600); err != nil {
		log.Warn("docker reaper: pid file", "err", err)
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
	if err != nil || !strings.Contains(string(cmdline), "docker-reaper") {
		return // gone, or the number is another process's now
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err == nil {
		log.Info("stopped the docker reaper an earlier Berth left", "pid", pid)
	}
}

// runDockerReaper reads renewals on stdin until it closes, then removes the
// instance's containers once after has passed since the last one. SIGTERM
// (a new Berth on the same data dir) ends it without removing anything.
func runDockerReaper(ctx context.Context, args []string, stdio Stdio) error {
	fs := newFlags("docker-reaper", "berth docker-reaper --instance NAME --after DURATION", stdio)
	instance := fs.String("instance", "", "the docker runtime instance whose containers to remove")
	after := fs.Duration("after", 0, "how long after the last renewal to remove them")
	if _, err := fs.parse(args); err != nil {
		return err
	}
	if *instance == "" || *after <= 0 {
		return usagef("--instance and a positive --after are required")
	}
	signal.Ignore(syscall.SIGINT, syscall.SIGHUP) // Berth's terminal is not ours
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	beats := make(chan struct{}, 1)
	closed := make(chan struct{})
	go func() {
		buf := make([]byte, 64)
		for {
			if _, err := stdio.In.Read(buf); err != nil {
				if !errors.Is(err, io.EOF) {
					fmt.Fprintln(stdio.Err, "docker reaper: read:", err)
				}
				close(closed)
				return
			}
			select {
			case beats <- struct{}{}:
			default:
			}
		}
	}()
	last := time.Now()
	for {
		select {
		case <-term:
			return nil
		case <-beats:
			last = time.Now()
			continue
		case <-closed:
		}
		break
	}
	select {
	case <-term:
		return nil
	case <-time.After(time.Until(last.Add(*after))):
	}
	// Until they are all gone, or a minute has passed: an engine that
	// refuses one removal may take the next.
	rctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for {
		n, err := docker.Reap(rctx, "", *instance)
		if n > 0 {
			fmt.Fprintf(stdio.Err, "docker reaper: removed %d containers of %s, whose Berth died\n", n, *instance)
		}
		if err == nil || rctx.Err() != nil {
			return err
		}
		fmt.Fprintln(stdio.Err, "docker reaper:", err)
		time.Sleep(200 * time.Millisecond)
	}
}
