package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
	"github.com/berthhq/berth/internal/testbin"
)

// cliResult is one finished berth CLI run.
type cliResult struct {
	stdout, stderr string
	code           int
}

// cli runs the berth binary with args against the server and returns its
// output and exit code. env adds to a clean environment.
func (s *server) cli(t *testing.T, ctx context.Context, env []string, args ...string) cliResult {
	t.Helper()
	cmd := exec.CommandContext(ctx, bin.berth, args...)
	cmd.Env = append(testbin.CleanEnv(), "BERTH_API="+s.checkedAPI())
	cmd.Env = append(cmd.Env, env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := cliResult{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		t.Fatalf("run berth %v: %v", args, err)
	}
	t.Logf("$ berth %s\n%s%s(exit %d)", strings.Join(args, " "), r.stdout, r.stderr, r.code)
	return r
}

// cliRun is a berth CLI command still running, whose output the test
// watches as it comes.
type cliRun struct {
	cmd  *exec.Cmd
	out  *testbin.SyncBuffer
	errb *testbin.SyncBuffer
	done chan struct{}
	code int
}

// cliStart starts a long-running CLI command (events, logs -f). It is
// killed, if still running, when the test ends.
func (s *server) cliStart(t *testing.T, args ...string) *cliRun {
	t.Helper()
	r := &cliRun{out: &testbin.SyncBuffer{}, errb: &testbin.SyncBuffer{}, done: make(chan struct{})}
	r.cmd = exec.Command(bin.berth, args...)
	r.cmd.Env = append(testbin.CleanEnv(), "BERTH_API="+s.checkedAPI())
	r.cmd.Stdout, r.cmd.Stderr = r.out, r.errb
	if err := r.cmd.Start(); err != nil {
		t.Fatalf("start berth %v: %v", args, err)
	}
	go func() {
		err := r.cmd.Wait()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			r.code = ee.ExitCode()
		} else if err != nil {
			r.code = -1
		}
		close(r.done)
	}()
	t.Cleanup(func() {
		r.cmd.Process.Kill()
		<-r.done
		t.Logf("$ berth %s\n%s%s(exit %d)", strings.Join(args, " "), r.out.String(), r.errb.String(), r.code)
	})
	return r
}

func (r *cliRun) output() string { return r.out.String() }

// await polls the command's output until it contains every string.
func (r *cliRun) await(t *testing.T, subs ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !containsAll(r.out.String(), subs) {
		select {
		case <-r.done:
			if containsAll(r.out.String(), subs) {
				return
			}
			t.Fatalf("berth %v exited (%d) without printing %q", r.cmd.Args[1:], r.code, subs)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("berth %v did not print %q within 10s", r.cmd.Args[1:], subs)
		}
	}
}

// wait waits for the command to end by itself and returns its exit code.
func (r *cliRun) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-r.done:
		return r.code
	case <-time.After(15 * time.Second):
		t.Fatalf("berth %v did not end within 15s", r.cmd.Args[1:])
		return -1
	}
}

var urlRE = regexp.MustCompile(`http://\S+/`)

// TestCLI: the client verbs against a running server.
func TestCLI(t *testing.T) {
	t.Parallel()
	s := start(t, opts{})
	ctx := testCtx(t, 60*time.Second)

	// connect --wait spawns and shows the state changes, then the URL.
	r := s.cli(t, ctx, nil, "connect", "--wait", "--env", "TB_LOG_LINES=4", "cli-doc", "--", bin.testbackend)
	if r.code != 0 {
		t.Fatalf("berth connect --wait: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{"starting", "ready"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("connect --wait output lacks the state %q", want)
		}
	}
	url := urlRE.FindString(r.stdout)
	if !strings.HasPrefix(url, s.Proxy+"/") {
		t.Fatalf("connect output has no proxy URL (%s/…):\n%s", s.Proxy, r.stdout)
	}
	if resp, body := get(t, url, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("GET the URL connect printed: %d %s", resp.StatusCode, body)
	}
	list, err := s.Client.Backends(ctx, "cli-doc", "")
	if err != nil || len(list) != 1 {
		t.Fatalf("backends for cli-doc: %v %v, want one", list, err)
	}
	id := list[0].ID
	if !strings.Contains(r.stdout, id) {
		t.Errorf("connect output does not name the backend %s", id)
	}

	t.Run("connect again", func(t *testing.T) {
		r := s.cli(t, ctx, nil, "connect", "--json", "cli-doc")
		if r.code != 0 {
			t.Fatalf("exit %d", r.code)
		}
		var resp api.ConnectResponse
		if err := json.Unmarshal([]byte(r.stdout), &resp); err != nil {
			t.Fatalf("connect --json: %v", err)
		}
		if resp.BackendID != id || resp.Spawned {
			t.Errorf("connect --json: backend %s spawned %v, want %s, false", resp.BackendID, resp.Spawned, id)
		}
	})

	t.Run("ps", func(t *testing.T) {
		r := s.cli(t, ctx, nil, "ps")
		if r.code != 0 || !strings.Contains(r.stdout, id) || !strings.Contains(r.stdout, "cli-doc") || !strings.Contains(r.stdout, "ready") {
			t.Errorf("berth ps: exit %d; want 0 and a row with %s, cli-doc, ready", r.code, id)
		}
		r = s.cli(t, ctx, nil, "ps", "--json", "--key", "cli-doc")
		var l api.BackendList
		if err := json.Unmarshal([]byte(r.stdout), &l); err != nil || len(l.Backends) != 1 || l.Backends[0].ID != id {
			t.Errorf("berth ps --json --key cli-doc: %v %+v", err, l)
		}
	})

	t.Run("get and --output json", func(t *testing.T) {
		r := s.cli(t, ctx, []string{"BERTH_URL=" + s.API}, "get", "--output", "json", id)
		var b berth.Backend
		if err := json.Unmarshal([]byte(r.stdout), &b); err != nil || b.ID != id || b.Key != "cli-doc" || b.State != berth.StateReady {
			t.Errorf("berth get --output json: %v %+v", err, b)
		}
		if r := s.cli(t, ctx, nil, "get", id); r.code != 0 || !strings.Contains(r.stdout, "cli-doc") || !strings.Contains(r.stdout, bin.testbackend) {
			t.Errorf("berth get: exit %d; want 0 and the key and command", r.code)
		}
	})

	t.Run("a command without --", func(t *testing.T) {
		r := s.cli(t, ctx, nil, "connect", "cli-other", bin.testbackend, "-port", "1")
		if r.code != 2 || strings.Count(r.stderr, "\n") != 2 || !strings.Contains(r.stderr, "-- "+bin.testbackend+" -port 1") {
			t.Errorf("berth connect KEY CMD -flag: exit %d, stderr %q; want 2 and the line with --", r.code, r.stderr)
		}
	})

	t.Run("logs", func(t *testing.T) {
		want := tbLogLines(4)
		deadline := time.Now().Add(5 * time.Second)
		for {
			r := s.cli(t, ctx, nil, "logs", id)
			if r.code != 0 {
				t.Fatalf("berth logs: exit %d", r.code)
			}
			if containsAll(r.stdout, want) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("berth logs output lacks %q", want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})

	t.Run("events, logs -f and terminate", func(t *testing.T) {
		// Both follow the live backend and must end by themselves once it
		// is terminated.
		events := s.cliStart(t, "events", id)
		logsF := s.cliStart(t, "logs", "-f", id)
		events.await(t, "ready")
		logsF.await(t, tbLogLines(4)...)
		r := s.cli(t, ctx, nil, "terminate", id)
		if r.code != 0 || !strings.Contains(r.stdout, id) {
			t.Errorf("berth terminate: exit %d, output %q; want 0 and the id", r.code, r.stdout)
		}
		for name, f := range map[string]*cliRun{"events": events, "logs -f": logsF} {
			if code := f.wait(t); code != 0 {
				t.Errorf("berth %s: exit %d", name, code)
			}
		}
		for _, want := range []string{"scheduled", "starting", "ready", "terminating", "terminated", "requested"} {
			if !strings.Contains(events.output(), want) {
				t.Errorf("berth events output lacks %q", want)
			}
		}
		r = s.cli(t, ctx, nil, "ps", "--all")
		if r.code != 0 || !strings.Contains(r.stdout, id) || !strings.Contains(r.stdout, "terminated") {
			t.Errorf("berth ps --all: exit %d; want 0 and %s terminated", r.code, id)
		}
	})

	t.Run("connect --wait reports a failed start", func(t *testing.T) {
		r := s.cli(t, ctx, nil, "connect", "--wait", "--startup-timeout", "1", "--env", "TB_READY_DELAY_MS=30000", "-", "--", bin.testbackend)
		if r.code == 0 {
			t.Errorf("connect --wait for a backend that never gets ready: exit 0, want non-zero")
		}
		if !strings.Contains(r.stdout+r.stderr, string(berth.ReasonStartupTimeout)) {
			t.Errorf("output does not say startup_timeout")
		}
	})

	t.Run("server unreachable", func(t *testing.T) {
		dead := "http://" + testbin.FreeAddr(t)
		r := s.cli(t, ctx, nil, "ps", "--api", dead)
		if r.code != 1 || !strings.Contains(r.stderr, "cannot reach Berth") {
			t.Errorf("berth ps against nothing: exit %d, stderr %q; want 1 and 'cannot reach Berth'", r.code, r.stderr)
		}
	})
}

// TestCLIWithAPIKey: the client verbs send BERTH_API_KEY to berth serve.
func TestCLIWithAPIKey(t *testing.T) {
	t.Parallel()
	const key = "e2e-cli-api-key"
	s := start(t, opts{serve: true, apiKey: key})
	ctx := testCtx(t, 30*time.Second)
	if r := s.cli(t, ctx, nil, "ps"); r.code != 1 || !strings.Contains(r.stderr, "401") {
		t.Errorf("berth ps without the key: exit %d stderr %q; want 1 and a 401", r.code, r.stderr)
	}
	if r := s.cli(t, ctx, []string{"BERTH_API_KEY=" + key}, "ps"); r.code != 0 {
		t.Errorf("berth ps with BERTH_API_KEY: exit %d", r.code)
	}
	r := s.cli(t, ctx, []string{"BERTH_API_KEY=" + key}, "connect", "--wait", "keyed", "--", bin.testbackend)
	if r.code != 0 {
		t.Fatalf("berth connect with BERTH_API_KEY: exit %d", r.code)
	}
	url := urlRE.FindString(r.stdout)
	if resp, _ := get(t, url, nil); resp.StatusCode != http.StatusOK {
		t.Errorf("GET %s: %d", url, resp.StatusCode)
	}
}
