// Package runtimetest is the conformance suite every runtime passes: it
// starts internal/testbackend through the runtime and checks the contract of
// package runtime (start, environment, graceful and hard stop, exit codes,
// logs, recovery after a restart, group kill, cleanup, listing). It must
// never depend on a particular runtime; what differs goes in the Harness.
package runtimetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berthhq/berth/runtime"
)

// patience bounds every wait in the suite; generous, since container
// runtimes may be slow on a loaded CI machine.
const patience = 60 * time.Second

// Harness adapts the suite to one runtime.
type Harness struct {
	// New returns a fresh runtime. Subtests run in parallel, each with its
	// own.
	New func(t *testing.T) runtime.Runtime
	// Spec returns a spec that runs internal/testbackend (see
	// BuildTestBackend) as backend id, with env added to the environment
	// Berth sets (see Env). The suite sets Spec.Logs.
	Spec func(t *testing.T, id string, env map[string]string) runtime.Spec
	// Restart returns a new runtime that finds what old started, as after a
	// restart of Berth. Nil skips the recovery tests.
	Restart func(t *testing.T, old runtime.Runtime) runtime.Runtime
	// HostPIDs says backends run in the host's pid namespace, so the suite
	// can check from outside that Stop kills the processes a backend started.
	HostPIDs bool
}

// Env returns the environment Berth gives backend id listening on port,
// with extra added.
func Env(id string, port int, extra map[string]string) map[string]string {
	env := map[string]string{
		"PORT":                strconv.Itoa(port),
		"BERTH_BACKEND_ID":    id,
		"BERTH_KEY":           "key-" + id,
		"BERTH_SECRET":        "secret-" + id,
		"BERTH_FENCING_TOKEN": "1",
	}
	for k, v := range extra {
		env[k] = v
	}
	return env
}

// Run runs the conformance suite.
func Run(t *testing.T, h Harness) {
	s := &suite{h: h}
	tests := []struct {
		name string
		fn   func(*testing.T)
	}{
		{"Start", s.testStart},
		{"StopGraceful", s.testStopGraceful},
		{"StopSignal", s.testStopSignal},
		{"StopAfterGrace", s.testStopAfterGrace},
		{"StopHard", s.testStopHard},
		{"StopExited", s.testStopExited},
		{"ExitCodes", s.testExitCodes},
		{"Logs", s.testLogs},
		{"WaitContext", s.testWaitContext},
		{"Recover", s.testRecover},
		{"GroupKill", s.testGroupKill},
		{"Cleanup", s.testCleanup},
		{"List", s.testList},
		{"Caps", s.testCaps},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.fn(t)
		})
	}
}

type suite struct{ h Harness }

// backend is one started test backend.
type backend struct {
	rt     runtime.Runtime
	spec   runtime.Spec
	handle *runtime.Handle
	logs   *logBuffer
}

// start starts a test backend with the env knobs and stops and removes it
// when the test ends.
func (s *suite) start(t *testing.T, rt runtime.Runtime, env map[string]string) *backend {
	t.Helper()
	id := "bk_rtt" + strings.ToLower(rand.Text()[:12])
	b := &backend{rt: rt, spec: s.h.Spec(t, id, env), logs: new(logBuffer)}
	b.spec.Logs = b.logs
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	h, err := rt.Start(ctx, b.spec)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	b.handle = h
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), patience)
		defer cancel()
		if err := rt.Stop(ctx, h, "", 0); err != nil {
			t.Errorf("cleanup: Stop: %v", err)
		}
		if _, err := rt.Wait(ctx, h); err != nil && !errors.Is(err, runtime.ErrGone) {
			t.Errorf("cleanup: Wait: %v", err)
		}
		if err := rt.Cleanup(ctx, h); err != nil {
			t.Errorf("cleanup: Cleanup: %v", err)
		}
	})
	return b
}

// get polls path on the backend until it answers, and returns the body.
func (b *backend) get(t *testing.T, path string) []byte {
	t.Helper()
	deadline := time.Now().Add(patience)
	url := "http://" + b.handle.Addr + path
	for d := 5 * time.Millisecond; ; d = min(2*d, 200*time.Millisecond) {
		resp, err := http.Get(url)
		if err == nil {
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil && resp.StatusCode == http.StatusOK {
				return body
			}
			t.Fatalf("GET %s: %s %s %v", path, resp.Status, body, err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: no answer in %s: %v\nlogs:\n%s", path, patience, err, b.logs)
		}
		time.Sleep(d)
	}
}

// fire sends a request that makes the backend exit, so its answer may be
// cut short.
func (b *backend) fire(path string) {
	if resp, err := http.Get("http://" + b.handle.Addr + path); err == nil {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}

func (b *backend) stop(t *testing.T, signal string, grace time.Duration) time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), patience+grace)
	defer cancel()
	began := time.Now()
	if err := b.rt.Stop(ctx, b.handle, signal, grace); err != nil {
		t.Fatalf("Stop(%q, %s): %v", signal, grace, err)
	}
	return time.Since(began)
}

func (b *backend) wait(t *testing.T) runtime.Exit {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	e, err := b.rt.Wait(ctx, b.handle)
	if err != nil {
		t.Fatalf("Wait: %v\nlogs:\n%s", err, b.logs)
	}
	return e
}

func (s *suite) testStart(t *testing.T) {
	b := s.start(t, s.h.New(t), map[string]string{"TB_HELLO": "world"})
	if got, want := b.handle.BackendID, b.spec.BackendID; got != want {
		t.Errorf("Handle.BackendID = %q, want %q", got, want)
	}
	if got, want := b.handle.Runtime, b.rt.Name(); got != want {
		t.Errorf("Handle.Runtime = %q, want %q", got, want)
	}
	var env map[string]string
	if err := json.Unmarshal(b.get(t, "/"), &env); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"PORT", "BERTH_BACKEND_ID", "BERTH_KEY", "BERTH_SECRET", "BERTH_FENCING_TOKEN", "TB_HELLO"} {
		if got, want := env[k], b.spec.Env[k]; got != want || want == "" {
			t.Errorf("backend sees %s=%q, want %q", k, got, want)
		}
	}
}

func (s *suite) testStopGraceful(t *testing.T) {
	b := s.start(t, s.h.New(t), map[string]string{"TB_TERM_DELAY_MS": "200"})
	b.get(t, "/")
	const grace = 20 * time.Second
	if took := b.stop(t, "", grace); took >= grace {
		t.Errorf("Stop took %s, the whole grace period, for a backend that exits 200ms after SIGTERM", took)
	}
	if e := b.wait(t); e.Code != 0 || e.Signal != "" {
		t.Errorf("Wait = %+v, want a clean exit 0", e)
	}
	b.logs.waitFor(t, "got SIGTERM")
}

func (s *suite) testStopSignal(t *testing.T) {
	b := s.start(t, s.h.New(t), nil)
	b.get(t, "/")
	b.stop(t, "SIGINT", 20*time.Second)
	if e := b.wait(t); e.Code != 0 || e.Signal != "" {
		t.Errorf("Wait = %+v, want a clean exit 0", e)
	}
	b.logs.waitFor(t, "got SIGINT")
}

func (s *suite) testStopAfterGrace(t *testing.T) {
	b := s.start(t, s.h.New(t), map[string]string{"TB_IGNORE_SIGTERM": "1"})
	b.get(t, "/")
	const grace = 1500 * time.Millisecond
	if took := b.stop(t, "", grace); took < grace {
		t.Errorf("Stop took %s, less than the grace period %s, for a backend that ignores SIGTERM", took, grace)
	}
	if e := b.wait(t); !killed(e) {
		t.Errorf("Wait = %+v, want killed by SIGKILL", e)
	}
}

func (s *suite) testStopHard(t *testing.T) {
	b := s.start(t, s.h.New(t), map[string]string{"TB_IGNORE_SIGTERM": "1"})
	b.get(t, "/")
	b.stop(t, "", 0)
	if e := b.wait(t); !killed(e) {
		t.Errorf("Wait = %+v, want killed by SIGKILL", e)
	}
}

// killed reports whether e says SIGKILL, as a signal or as a shell-style
// exit code.
func killed(e runtime.Exit) bool { return e.Signal == "SIGKILL" || e.Code == 128+9 }

func (s *suite) testStopExited(t *testing.T) {
	b := s.start(t, s.h.New(t), map[string]string{"TB_EXIT_AFTER_MS": "1", "TB_EXIT_CODE": "4"})
	first := b.wait(t)
	b.stop(t, "", 5*time.Second)
	b.stop(t, "", 0)
	if e := b.wait(t); e.Code != first.Code || e.Code != 4 {
		t.Errorf("Wait after Stop of an exited backend = %+v, want code 4 as before (%+v)", e, first)
	}
}

func (s *suite) testExitCodes(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		path string // requested once the backend answers
		want int
	}{
		{"exit 0", nil, "/exit?code=0", 0},
		{"exit 3", nil, "/exit?code=3", 3},
		{"crash", nil, "/crash", 2}, // a Go panic
		{"timer", map[string]string{"TB_EXIT_AFTER_MS": "50", "TB_EXIT_CODE": "5"}, "", 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := s.start(t, s.h.New(t), tt.env)
			if tt.path != "" {
				b.get(t, "/")
				b.fire(tt.path)
			}
			if e := b.wait(t); e.Code != tt.want || e.Signal != "" {
				t.Errorf("Wait = %+v, want exit code %d", e, tt.want)
			}
		})
	}
}

func (s *suite) testLogs(t *testing.T) {
	const n = 200
	b := s.start(t, s.h.New(t), map[string]string{"TB_LOG_LINES": strconv.Itoa(n)})
	b.get(t, "/log?line=marker-after-start")
	b.logs.waitFor(t, "marker-after-start")
	for i := 1; i <= n; i++ {
		for _, stream := range []string{"stdout", "stderr"} {
			if line := fmt.Sprintf("tb %s %d\n", stream, i); !strings.Contains(b.logs.String(), line) {
				t.Fatalf("logs lack %q:\n%s", line, b.logs)
			}
		}
	}
	b.fire("/exit?code=0")
	b.wait(t)
}

func (s *suite) testWaitContext(t *testing.T) {
	b := s.start(t, s.h.New(t), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := b.rt.Wait(ctx, b.handle); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait on a running backend with an expiring context: %v, want %v", err, context.DeadlineExceeded)
	}
}

func (s *suite) testRecover(t *testing.T) {
	if s.h.Restart == nil {
		t.Skip("the harness has no Restart")
	}
	rt := s.h.New(t)
	b := s.start(t, rt, nil)
	b.get(t, "/")

	// What Berth persisted is all a restarted Berth knows.
	var h runtime.Handle
	raw, _ := json.Marshal(b.handle)
	if err := json.Unmarshal(raw, &h); err != nil {
		t.Fatal(err)
	}
	rt2 := s.h.Restart(t, rt)
	b2 := &backend{rt: rt2, spec: b.spec, handle: &h, logs: new(logBuffer)}
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	if err := rt2.Recover(ctx, b2.handle, b2.logs); err != nil {
		t.Fatalf("Recover a running backend: %v", err)
	}
	b2.get(t, "/log?line=marker-after-recover")
	b2.logs.waitFor(t, "marker-after-recover")
	b2.stop(t, "", 20*time.Second)
	b2.wait(t) // the exit code may be unknown after a restart
	b2.logs.waitFor(t, "got SIGTERM")

	if err := rt2.Recover(ctx, b2.handle, io.Discard); !errors.Is(err, runtime.ErrGone) {
		t.Errorf("Recover a stopped backend: %v, want ErrGone", err)
	}
	rt3 := s.h.Restart(t, rt2)
	if err := rt3.Recover(ctx, b2.handle, io.Discard); !errors.Is(err, runtime.ErrGone) {
		t.Errorf("Recover a stopped backend after another restart: %v, want ErrGone", err)
	}
	if err := rt3.Cleanup(ctx, b2.handle); err != nil {
		t.Errorf("Cleanup after a restart: %v", err)
	}
}

func (s *suite) testGroupKill(t *testing.T) {
	if !s.h.HostPIDs {
		t.Skip("backends' pids are not host pids")
	}
	pidfile := t.TempDir() + "/child.pid"
	b := s.start(t, s.h.New(t), map[string]string{"TB_CHILD": "1", "TB_CHILD_PIDFILE": pidfile})
	b.get(t, "/")
	raw, err := os.ReadFile(pidfile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(string(raw))
	if err != nil {
		t.Fatal(err)
	}
	start, ok := procStart(pid)
	if !ok {
		t.Fatalf("the backend's child %d does not run", pid)
	}
	// The leader exits on SIGTERM; the child ignores it and must be killed.
	b.stop(t, "", 10*time.Second)
	if s, ok := procStart(pid); ok && s == start {
		t.Errorf("the backend's child %d still runs after Stop", pid)
	}
}

// procStart returns the start time of pid from /proc/<pid>/stat, and false
// when no such process runs (a zombie has exited).
func procStart(pid int) (string, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", false
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	return f[19], f[0] != "Z" && f[0] != "X"
}

func (s *suite) testCleanup(t *testing.T) {
	b := s.start(t, s.h.New(t), map[string]string{"TB_EXIT_AFTER_MS": "1"})
	b.wait(t)
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	for i := range 2 {
		if err := b.rt.Cleanup(ctx, b.handle); err != nil {
			t.Fatalf("Cleanup #%d: %v", i+1, err)
		}
	}
	if err := b.rt.Stop(ctx, b.handle, "", 0); err != nil {
		t.Errorf("Stop after Cleanup: %v", err)
	}
}

func (s *suite) testList(t *testing.T) {
	rt := s.h.New(t)
	l, ok := rt.(runtime.Lister)
	if !ok {
		t.Skip("the runtime does not implement runtime.Lister")
	}
	running := s.start(t, rt, nil)
	exited := s.start(t, rt, map[string]string{"TB_EXIT_AFTER_MS": "1"})
	exited.wait(t)
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	ids := func() []string {
		hs, err := l.List(ctx)
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		var ids []string
		for _, h := range hs {
			ids = append(ids, h.BackendID)
		}
		return ids
	}
	r, e := running.spec.BackendID, exited.spec.BackendID
	if got := ids(); !slices.Contains(got, r) || !slices.Contains(got, e) {
		t.Errorf("List = %v, want the running %s and the exited, not cleaned up %s in it", got, r, e)
	}
	if err := rt.Cleanup(ctx, exited.handle); err != nil {
		t.Fatal(err)
	}
	if got := ids(); !slices.Contains(got, r) || slices.Contains(got, e) {
		t.Errorf("List after Cleanup of %s = %v, want %s in it and not %[1]s", e, got, r)
	}
}

// logBuffer is a Spec.Logs that tests can read while the runtime writes.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// waitFor waits until the logs contain s.
func (l *logBuffer) waitFor(t *testing.T, s string) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for d := time.Millisecond; !strings.Contains(l.String(), s); d = min(2*d, 100*time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("logs lack %q after %s:\n%s", s, patience, l)
		}
		time.Sleep(d)
	}
}

// testCaps checks what the runtime says it runs: within what its name
// stands for to a replica that does not run it (runtime.Known), freezing
// exactly when it is a Freezer, and the suite's own spawn among it.
func (s *suite) testCaps(t *testing.T) {
	rt := s.h.New(t)
	c := rt.Caps()
	k, ok := runtime.Known(rt.Name())
	if !ok {
		t.Fatalf("runtime.Known(%q) knows no such runtime: add it (and to berth.RuntimeNames)", rt.Name())
	}
	if c.Commands && !k.Commands || c.Images && !k.Images || c.Freeze && !k.Freeze {
		t.Errorf("Caps() = %+v claims more than runtime.Known(%q) = %+v", c, rt.Name(), k)
	}
	for _, m := range c.StateModes {
		if !slices.Contains(k.StateModes, m) {
			t.Errorf("Caps() keeps state mode %s, which runtime.Known(%q) does not", m, rt.Name())
		}
	}
	if _, freezer := rt.(runtime.Freezer); c.Freeze != freezer {
		t.Errorf("Caps().Freeze = %v, but the runtime is a Freezer: %v", c.Freeze, freezer)
	}
	spec := s.h.Spec(t, "bk_rttcaps", nil)
	if err := c.Accepts(&spec.Spawn); err != nil {
		t.Errorf("Caps().Accepts(the suite's spawn): %v", err)
	}
}
