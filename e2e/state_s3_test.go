package e2e

import (
	"context"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
	"github.com/berthhq/berth/internal/testbin"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// s3Server is a versitygw of this test's own, started from
// BERTH_TEST_S3_CMD on another port and data directory. The test stops it
// and starts it again; stopping the shared one would break every other
// test (and package) using it at the same time.
type s3Server struct {
	t        *testing.T
	argv     []string
	endpoint string
	bucket   string
	out      *testbin.SyncBuffer
	cmd      *exec.Cmd
	done     chan struct{}
}

func startS3(t *testing.T) *s3Server {
	t.Helper()
	s3Env(t)
	line := os.Getenv("BERTH_TEST_S3_CMD")
	if line == "" {
		need(t, "the command that starts the S3 server (BERTH_TEST_S3_CMD)", "source .ci/services.sh")
	}
	argv := strings.Fields(line)
	addr, dir := testbin.FreeAddr(t), t.TempDir()
	port, posix := -1, -1
	for i, a := range argv {
		switch a {
		case "--port":
			port = i + 1
		case "posix":
			posix = i + 1
		}
	}
	if port < 1 || port >= len(argv) || posix < 1 || posix >= len(argv) {
		t.Fatalf("BERTH_TEST_S3_CMD %q: want a versitygw command line with --port ADDR and posix DIR", line)
	}
	argv[port], argv[posix] = addr, dir
	s := &s3Server{t: t, argv: argv, endpoint: "http://" + addr, bucket: "berth-e2e", out: &testbin.SyncBuffer{}}
	t.Cleanup(func() {
		if s.running() {
			syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
			<-s.done
		}
		if t.Failed() {
			t.Logf("versitygw output (tail):\n%s", tail(s.out.String(), 30))
		}
	})
	s.start()

	c, err := minio.New(addr, &minio.Options{
		Creds:        credentials.NewStaticV4(os.Getenv("AWS_ACCESS_KEY_ID"), os.Getenv("AWS_SECRET_ACCESS_KEY"), ""),
		Region:       "us-east-1",
		BucketLookup: minio.BucketLookupPath,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.MakeBucket(testCtx(t, 20*time.Second), s.bucket, minio.MakeBucketOptions{Region: "us-east-1"}); err != nil {
		t.Fatalf("create bucket %s on the private versitygw: %v", s.bucket, err)
	}
	return s
}

func (s *s3Server) running() bool {
	if s.done == nil {
		return false
	}
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// start runs the server and waits until it answers HTTP.
func (s *s3Server) start() {
	s.t.Helper()
	s.cmd = exec.Command(s.argv[0], s.argv[1:]...)
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("start versitygw: %v", err)
	}
	done := make(chan struct{})
	s.done = done
	cmd := s.cmd
	go func() { cmd.Wait(); close(done) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(s.endpoint + "/")
		if err == nil {
			resp.Body.Close()
			return // any answer, even 403, means it is up
		}
		select {
		case <-done:
			s.t.Fatalf("versitygw exited at start:\n%s", s.out.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("versitygw does not answer at %s after 20s: %v", s.endpoint, err)
		}
	}
}

// stop kills the server (as a crash would) and waits until it is gone.
func (s *s3Server) stop() {
	s.t.Helper()
	if err := syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL); err != nil {
		s.t.Fatalf("kill versitygw: %v", err)
	}
	<-s.done
	if resp, err := http.Get(s.endpoint + "/"); err == nil {
		resp.Body.Close()
		s.t.Fatalf("something still answers at %s after versitygw was killed", s.endpoint)
	}
}

// TestStateS3Outage: the S3 server dies while a backend saves and while it
// stops. The save is spooled (202), the stopped backend keeps its key — no
// new backend for the key — until the server is back, and then the next
// backend loads exactly the spooled state.
func TestStateS3Outage(t *testing.T) {
	t.Parallel()
	s3 := startS3(t)
	s := startWith(t, opts{}, "--blobs", s3BlobsURL(s3.endpoint, s3.bucket))
	// Cleanups run last-registered first: the S3 server must be back before
	// berth's graceful stop, which waits for final saves.
	t.Cleanup(func() {
		if !s3.running() {
			s3.start()
		}
	})
	key := "outage/" + randHex(4)
	a := s.spawnReady(t, key, tbBlob())
	st := stateOf(t, a.URL)
	st.mustPut(t, "before the outage")

	s3.stop()
	const spooled = "written while S3 was down"
	began := time.Now()
	code, body := st.put(t, spooled)
	t.Logf("PUT during the outage answered %d after %v: %s", code, time.Since(began).Round(time.Millisecond), body)
	if code != http.StatusAccepted {
		t.Fatalf("PUT while S3 is down: %d %s, want 202 (spooled)", code, body)
	}
	st.mustGet(t, spooled) // the backend reads its own latest write back

	s.terminate(t, a.BackendID, false)
	s.waitState(t, a.BackendID, berth.StateTerminating, 10*time.Second)
	// The backend has exited; its final state is not durable, so it must
	// stay terminating and keep the key.
	hold := time.Now().Add(1500 * time.Millisecond)
	for time.Now().Before(hold) {
		if b := s.backend(t, a.BackendID); b.State != berth.StateTerminating {
			t.Fatalf("backend A is %s while S3 is down and its state only spooled; want it to stay terminating", b.State)
		}
		time.Sleep(50 * time.Millisecond)
	}
	cctx, cancel := context.WithTimeout(t.Context(), 1500*time.Millisecond)
	r, err := s.Client.Connect(cctx, api.ConnectRequest{Key: key, Spawn: tbBlob()})
	cancel()
	if err == nil {
		t.Errorf("connect for the key while its last state is not durable answered %+v; want it to wait", r)
	} else if !errors.Is(err, context.DeadlineExceeded) {
		t.Logf("connect while the key is held: %v", err)
	}
	bs, err := s.Client.Backends(testCtx(t, 10*time.Second), key, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(bs) != 1 || bs[0].ID != a.BackendID || bs[0].State != berth.StateTerminating {
		t.Fatalf("backends of the key while S3 is down: %v; want only A, terminating", ids(bs))
	}
	if n := metric(t, s, "berth_state_save_errors_total"); n < 1 {
		t.Errorf("berth_state_save_errors_total = %v during the outage, want at least 1", n)
	}

	s3.start()
	end := s.waitTerminated(t, a.BackendID, 45*time.Second)
	if end.Reason != berth.ReasonRequested {
		t.Errorf("A ended %s, want requested", end.Reason)
	}
	b := s.spawnReady(t, key, tbBlob())
	if b.FencingToken <= a.FencingToken {
		t.Errorf("B's fencing token %d is not above A's %d", b.FencingToken, a.FencingToken)
	}
	stateOf(t, b.URL).mustGet(t, spooled)
	vs := s.versions(t, key)
	if len(vs) != 2 || vs[0].SHA256 != sha([]byte(spooled)) || vs[0].Fence != a.FencingToken || vs[1].SHA256 != sha([]byte("before the outage")) {
		t.Errorf("history after the outage: %+v; want the spooled save (fence %d) over the first one", vs, a.FencingToken)
	}
}

func ids(bs []*berth.Backend) []string {
	var out []string
	for _, b := range bs {
		out = append(out, b.ID+":"+string(b.State))
	}
	return out
}

// metric reads one unlabelled counter or gauge from /metrics.
func metric(t *testing.T, s *server, name string) float64 {
	t.Helper()
	resp, body := s.do(t, http.MethodGet, "/metrics", "")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d", resp.StatusCode)
	}
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindSubmatch(body)
	if m == nil {
		t.Fatalf("/metrics has no %s", name)
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatalf("/metrics %s: %q", name, m[1])
	}
	return v
}

// TestStateS3OutageRestart: Berth is killed while a stopped backend's last
// state waits in the spool for S3, and started again while S3 is still
// down. The spool survives, Berth serves (the key stays held), and once S3
// is back the state lands and the next backend loads it.
func TestStateS3OutageRestart(t *testing.T) {
	t.Parallel()
	s3 := startS3(t)
	blobs := s3BlobsURL(s3.endpoint, s3.bucket)
	dataDir := t.TempDir()
	s1 := startWith(t, opts{dataDir: dataDir}, "--blobs", blobs)
	key := "outage-restart/" + randHex(4)
	a := s1.spawnReady(t, key, tbBlob())
	st := stateOf(t, a.URL)
	st.mustPut(t, "before the outage")
	s3.stop()
	const spooled = "spooled before berth was killed"
	if code, body := st.put(t, spooled); code != http.StatusAccepted {
		t.Fatalf("PUT while S3 is down: %d %s, want 202", code, body)
	}
	s1.terminate(t, a.BackendID, false)
	s1.waitState(t, a.BackendID, berth.StateTerminating, 10*time.Second)
	s1.kill()

	// Registered before the second Berth, so it runs after that Berth's
	// cleanup: a test failing early must not leave S3 down for it.
	t.Cleanup(func() {
		if !s3.running() {
			s3.start()
		}
	})
	s2 := launch(t, opts{dataDir: dataDir, extra: []string{"--blobs", blobs}})
	if !healthyWithin(s2, 10*time.Second) {
		exited := false
		select {
		case <-s2.done:
			exited = true
			t.Errorf("berth started again while S3 is down exits instead of serving (%v): %s", s2.waitErr, lastLine(s2.out.String()))
			s2.killed = true // reported here; its cleanup has nothing left to stop
		default:
			t.Errorf("berth started again while S3 is down does not answer /healthz within 10s; it must serve (and keep the key held) while the last state waits in the spool")
		}
		// Whatever happened, nothing may be lost: go on with S3 back.
		s3.start()
		if exited {
			s2 = startWith(t, opts{dataDir: dataDir}, "--blobs", blobs)
		}
	}
	s2.waitHealthy()
	if s3.running() {
		t.Log("S3 was started again before the check below; it only shows that nothing was lost")
	} else {
		if b := s2.backend(t, a.BackendID); b.State != berth.StateTerminating {
			t.Errorf("after the restart A is %s while S3 is still down; want terminating (its key held)", b.State)
		}
		cctx, cancel := context.WithTimeout(t.Context(), time.Second)
		r, err := s2.Client.Connect(cctx, api.ConnectRequest{Key: key, Spawn: tbBlob()})
		cancel()
		if err == nil {
			t.Errorf("connect while the key's last state is only spooled answered %+v; want it to wait", r)
		}
		s3.start()
	}
	end := s2.waitTerminated(t, a.BackendID, 45*time.Second)
	if end.Reason != berth.ReasonLost && end.Reason != berth.ReasonRequested {
		t.Errorf("A ended %s, want lost (or requested)", end.Reason)
	}
	b := s2.spawnReady(t, key, tbBlob())
	stateOf(t, b.URL).mustGet(t, spooled)
	if vs := s2.versions(t, key); len(vs) != 2 || vs[0].SHA256 != sha([]byte(spooled)) {
		t.Errorf("history after the outage and restart: %+v; want the spooled save over the first", vs)
	}
}

// healthyWithin reports whether the server answers /healthz before timeout.
func healthyWithin(s *server, timeout time.Duration) bool {
	// A Berth that listens but does not serve yet accepts the connection
	// and never answers: each try needs its own deadline.
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		resp, err := client.Get(s.API + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return true
			}
		}
		select {
		case <-s.done:
			return false
		case <-time.After(20 * time.Millisecond):
		}
	}
	return false
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
