package cli

import (
	"bytes"
	"context"
	"io"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// startGroup starts a sleep in a process group of its own, as a backend's.
func startGroup(t *testing.T) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

// reap runs the reaper on what Berth says in lines, then closes its pipe,
// and returns how long the reaper took to end.
func reap(t *testing.T, after string, lines ...string) time.Duration {
	t.Helper()
	pr, pw := io.Pipe()
	var stderr bytes.Buffer
	done := make(chan error, 1)
	go func() {
		done <- runReaper(context.Background(), []string{"--after", after}, Stdio{In: pr, Out: io.Discard, Err: &stderr})
	}()
	for _, l := range lines {
		io.WriteString(pw, l+"\n")
	}
	closed := time.Now()
	pw.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("reaper: %v (%s)", err, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the reaper did not end within 30s of its pipe closing")
	}
	return time.Since(closed)
}

func TestReaper(t *testing.T) {
	t.Run("a Berth that died: its groups are killed", func(t *testing.T) {
		cmd := startGroup(t)
		reap(t, "10s", "renewed", "+"+strconv.Itoa(cmd.Process.Pid))
		if err := cmd.Wait(); err == nil {
			t.Fatal("the backend's group survived its Berth's death")
		}
	})
	t.Run("a group Berth let go of is left alone", func(t *testing.T) {
		cmd := startGroup(t)
		pid := strconv.Itoa(cmd.Process.Pid)
		reap(t, "10s", "+"+pid, "-"+pid)
		if err := syscall.Kill(cmd.Process.Pid, 0); err != nil {
			t.Fatalf("a group Berth let go of was killed: %v", err)
		}
	})
	t.Run("a Berth that stopped gracefully: the reaper ends with it", func(t *testing.T) {
		// With the docker runtime, a dead Berth's reaper waits for the
		// lease's graceful-stop deadline before removing containers; a
		// Berth that stopped its backends itself leaves it nothing to
		// wait for, so it must not outlive Berth by that long.
		took := reap(t, "20s", "renewed", "docker berth-reaper-test-instance", "stopped")
		if took > 5*time.Second {
			t.Fatalf("the reaper of a Berth that stopped gracefully ended %s after it, want at once", took)
		}
	})
}
