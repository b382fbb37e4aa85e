package e2e

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berthhq/berth/internal/testbin"
	"golang.org/x/sys/unix"
)

// TestCLIConnectProgressTTY: on a real terminal (a pseudo-terminal, as a
// person's shell gives it), connect --wait redraws one progress line in
// place with the state and the time elapsed; piped, the same command
// prints plain lines without a control sequence (issue 20).
func TestCLIConnectProgressTTY(t *testing.T) {
	t.Parallel()
	s := start(t, opts{})
	args := []string{"connect", "--wait", "--env", "TB_READY_DELAY_MS=1500"}

	master, slave := openPTY(t)
	cmd := exec.Command(bin.berth, append(args, "tty-doc", "--", bin.testbackend)...)
	cmd.Env = append(testbin.CleanEnv(), "BERTH_API="+s.checkedAPI(), "TERM=xterm")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	slave.Close() // the child holds it; EOF (EIO) on master once it exits
	read := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(master) // ends with EIO when the child's side closes
		read <- string(b)
	}()
	werr := make(chan error, 1)
	go func() { werr <- cmd.Wait() }()
	var out string
	select {
	case err := <-werr:
		if err != nil {
			t.Errorf("berth connect --wait on a terminal: %v", err)
		}
		out = <-read
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("berth connect --wait on a terminal did not end within 60s")
	}
	draws := regexp.MustCompile(`\r\x1b\[K\S bk_\w+  ([^\r]*?)  (\d+\.\d)s`).FindAllStringSubmatch(out, -1)
	if len(draws) < 3 {
		t.Fatalf("on a terminal: %d redraws of the progress line, want several while it starts (1.5s); output %q", len(draws), out)
	}
	last := draws[len(draws)-1]
	if secs, _ := strconv.ParseFloat(last[2], 64); !strings.Contains(last[1], "ready") || secs < 1.4 {
		t.Errorf("the last progress line %q: want the move to ready after about 1.5s", last[0])
	}
	if !strings.Contains(out, "\r\x1b[KSpawned backend") {
		t.Errorf("the result does not start on a cleared line: %q", out)
	}

	// Piped: plain lines.
	r := s.cli(t, testCtx(t, 60*time.Second), nil, append(args, "pipe-doc", "--", bin.testbackend)...)
	if r.code != 0 || strings.ContainsAny(r.stdout+r.stderr, "\r\x1b") || !strings.Contains(r.stdout, "starting → ready") {
		t.Errorf("piped: exit %d, output %q; want plain lines with the state changes", r.code, r.stdout+r.stderr)
	}
}

// openPTY opens a pseudo-terminal pair: the master this side reads, the
// slave a child gets as its terminal.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY|syscall.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open /dev/ptmx: %v", err)
	}
	t.Cleanup(func() { master.Close() })
	fd := int(master.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlock the pty: %v", err)
	}
	n, err := unix.IoctlGetUint32(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("pty number: %v", err)
	}
	slave, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY|syscall.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open the pty's slave: %v", err)
	}
	t.Cleanup(func() { slave.Close() })
	return master, slave
}
