package chaos

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestTestbackend_KeyLock checks the witness before trusting it: a second
// testbackend of a key reports a VIOLATION naming the first, takes the lock
// once the first dies by SIGKILL, and another key never conflicts.
func TestTestbackend_KeyLock(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	audit := filepath.Join(dir, "audit.log")
	run := func(id, key string, fence int) *exec.Cmd {
		t.Helper()
		cmd := exec.Command(bin.testbackend)
		cmd.Env = []string{
			"PORT=" + freePort(t),
			"BERTH_BACKEND_ID=" + id,
			"BERTH_KEY=" + key,
			"BERTH_FENCING_TOKEN=" + strconv.Itoa(fence),
			"TB_AUDIT_FILE=" + audit,
			// Expanded by testbackend, as a container's BERTH_STATE_DIR is.
			"TB_LOCK_DIR=${LOCKS}",
			"LOCKS=" + dir,
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return cmd
	}
	// wait returns the first line of backend id with event once it is written.
	wait := func(id, event string) auditLine {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			lines, err := readAudit(dir, "audit.log")
			if err != nil {
				t.Fatal(err)
			}
			if i := slices.IndexFunc(lines, func(l auditLine) bool { return l.backend == id && l.event == event }); i >= 0 {
				return lines[i]
			}
			if time.Now().After(deadline) {
				t.Fatalf("no %s line from %s within 30s; audit:\n%s", event, id, readFile(audit))
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	const key = "doc/7:a@b"
	a := run("bk_a", key, 1)
	if l := wait("bk_a", "start"); l.key != key || l.fence != 1 || l.pid != a.Process.Pid {
		t.Errorf("start line %+v, want key %s fence 1 pid %d", l, key, a.Process.Pid)
	}
	wait("bk_a", "locked")
	wait("bk_a", "ready")

	b := run("bk_b", key, 2)
	v := wait("bk_b", "VIOLATION")
	if want := fmt.Sprintf("backend=bk_a fence=1 pid=%d", a.Process.Pid); !strings.Contains(v.attrs["holder"], want) {
		t.Errorf("VIOLATION names holder %q, want one with %q", v.attrs["holder"], want)
	}
	// A key that differs only where escaping could collapse it.
	run("bk_c", "doc/7:a_b", 1)
	wait("bk_c", "locked")

	a.Process.Signal(syscall.SIGKILL)
	a.Wait()
	if l := wait("bk_b", "locked"); l.attrs["late"] != "1" {
		t.Errorf("bk_b's lock after bk_a died: %q, want late=1", l.raw)
	}
	b.Process.Signal(syscall.SIGTERM)
	b.Wait()
	if l := wait("bk_b", "stop"); l.attrs["signal"] != "SIGTERM" {
		t.Errorf("stop line %q, want signal=SIGTERM", l.raw)
	}
	lines, _ := readAudit(dir, "audit.log")
	if vs := newAuditLog(lines).violations; len(vs) != 1 {
		t.Errorf("VIOLATION lines %d, want 1 (bk_b's):\n%s", len(vs), readFile(audit))
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	_, port, err := net.SplitHostPort(freeAddr())
	if err != nil {
		t.Fatal(err)
	}
	return port
}

func readFile(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	return string(b)
}

func TestParseAuditLine(t *testing.T) {
	tests := []struct {
		in   string
		want auditLine
		ok   bool
	}{
		{in: `tb-audit start key=doc/1:x@y backend=bk_1 fence=3 pid=42`,
			want: auditLine{event: "start", key: "doc/1:x@y", backend: "bk_1", fence: 3, pid: 42, attrs: map[string]string{}}, ok: true},
		{in: `tb-audit VIOLATION key=k backend=bk_2 fence=4 pid=7 holder="key=k backend=bk_1 fence=3 pid=6"`,
			want: auditLine{event: "VIOLATION", key: "k", backend: "bk_2", fence: 4, pid: 7,
				attrs: map[string]string{"holder": "key=k backend=bk_1 fence=3 pid=6"}}, ok: true},
		{in: `tb-audit exit key=k backend=bk_3 fence=1 pid=9 code=1 err="listen: \"x y\""`,
			want: auditLine{event: "exit", key: "k", backend: "bk_3", fence: 1, pid: 9,
				attrs: map[string]string{"code": "1", "err": `listen: "x y"`}}, ok: true},
		{in: `listening on [::]:8080`},
		{in: `tb-audit start key=k`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, ok := parseAuditLine(tt.in)
			if ok != tt.ok {
				t.Fatalf("ok = %v, want %v", ok, tt.ok)
			}
			if !ok {
				return
			}
			got.raw = ""
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}
