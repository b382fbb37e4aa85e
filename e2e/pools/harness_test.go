package pools

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
	"github.com/berthhq/berth/internal/testbin"
)

const apiKey = "pools-test-key"

// server is one `berth serve` with the process runtime and its own data
// dir; restart starts it again on the same dir and ports.
type server struct {
	t          *testing.T
	dir        string
	apiAt      string
	proxyAt    string
	BackendAPI string // the backend API's base URL
	API        string
	Client     *api.Client
	shared     string // audit file of the test backends
	extra      []string

	mu         sync.Mutex
	mismatches []error
	cmd        *exec.Cmd
	out        *testbin.SyncBuffer
	done       chan struct{}
	waitErr    error
	killed     bool
}

func startServer(t *testing.T, extra ...string) *server {
	t.Helper()
	s := &server{t: t, dir: t.TempDir(), shared: t.TempDir(), extra: extra,
		apiAt: testbin.FreeAddr(t), proxyAt: testbin.FreeAddr(t)}
	backendAt := testbin.FreeAddr(t)
	s.API, s.BackendAPI = "http://"+s.apiAt, "http://"+backendAt
	s.Client = api.NewClient(s.API, apiKey, nil)
	servers.Lock()
	servers.m[s.apiAt] = s
	servers.Unlock()
	s.launch(backendAt)
	t.Cleanup(s.stop)
	s.waitHealthy()
	return s
}

func (s *server) mismatch(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mismatches = append(s.mismatches, err)
}

func (s *server) launch(backendAt string) {
	args := append([]string{"serve",
		"--api-addr", s.apiAt, "--proxy-addr", s.proxyAt, "--backend-api-addr", backendAt,
		"--data-dir", s.dir, "--runtime", "process", "--log-level", "debug",
		"--api-key", apiKey, "--token-key", "pools-test-token-key-0123456789abcdef",
	}, s.extra...)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.out = &testbin.SyncBuffer{}
	s.done = make(chan struct{})
	s.killed = false
	s.cmd = exec.Command(bin.Berth, args...)
	s.cmd.Dir = s.dir
	s.cmd.Env = testbin.CleanEnv()
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("start berth: %v", err)
	}
	cmd, done := s.cmd, s.done
	go func() {
		err := cmd.Wait()
		s.mu.Lock()
		s.waitErr = err
		s.mu.Unlock()
		close(done)
	}()
}

func (s *server) waitHealthy() {
	t := s.t
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(s.API + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-s.done:
			t.Fatalf("berth exited before it was healthy: %v\n%s", s.waitErr, s.out.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("berth did not answer /healthz within 30s\n%s", s.out.String())
		}
	}
}

// kill SIGKILLs berth, leaving its backends running.
func (s *server) kill() {
	s.t.Helper()
	s.mu.Lock()
	s.killed = true
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		s.t.Fatal("berth did not die from SIGKILL")
	}
}

// restart starts a killed berth again on the same data dir and API port.
func (s *server) restart() {
	s.t.Helper()
	s.launch(strings.TrimPrefix(s.BackendAPI, "http://"))
	s.waitHealthy()
}

// stop is the cleanup: SIGINT and exit status 0 unless killed, and every
// answer matched the OpenAPI document.
func (s *server) stop() {
	t := s.t
	s.mu.Lock()
	killed, cmd, done := s.killed, s.cmd, s.done
	s.mu.Unlock()
	if !killed {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			t.Errorf("berth did not exit within 60s of SIGINT")
			cmd.Process.Kill()
			<-done
		}
		s.mu.Lock()
		if s.waitErr != nil {
			t.Errorf("berth exited with %v after SIGINT, want status 0", s.waitErr)
		}
		s.mu.Unlock()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, err := range s.mismatches {
		t.Errorf("an answer the OpenAPI document does not describe: %v", err)
	}
	if t.Failed() {
		t.Logf("berth output (tail):\n%s", tail(s.out.String(), 100))
	}
}

// template is a test backend that takes readyDelay to listen, appends its
// life (and its claims) to the shared audit file, and probes the backend
// API before any claim.
func (s *server) template(readyDelay time.Duration, env ...string) berth.SpawnConfig {
	grace := 1
	sc := berth.SpawnConfig{
		Command: []string{bin.TestBackend},
		Env: map[string]string{
			"TB_READY_DELAY_MS":   fmt.Sprint(readyDelay.Milliseconds()),
			"TB_AUDIT_FILE":       filepath.Join(s.shared, "audit.log"),
			"TB_PRECLAIM_API_URL": s.BackendAPI,
		},
		GraceSeconds: &grace,
	}
	for i := 0; i+1 < len(env); i += 2 {
		sc.Env[env[i]] = env[i+1]
	}
	return sc
}

// audit returns the audit file's lines that start with "tb-audit EVENT".
func (s *server) audit(event string) []string {
	f, err := os.Open(filepath.Join(s.shared, "audit.log"))
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "tb-audit "+event+" ") {
			out = append(out, sc.Text())
		}
	}
	return out
}

// putPool creates or replaces a pool and waits until this node has
// minReady of it ready.
func (s *server) putPool(name string, spawn berth.SpawnConfig, minReady, max int) {
	s.t.Helper()
	if _, err := s.Client.PutPool(s.t.Context(), name, api.PoolRequest{Spawn: &spawn, MinReady: minReady, Max: max}); err != nil {
		s.t.Fatalf("PUT pool %s: %v", name, err)
	}
	s.waitReady(name, minReady)
}

func (s *server) waitReady(name string, n int) *api.Pool {
	s.t.Helper()
	var p *api.Pool
	eventually(s.t, 60*time.Second, fmt.Sprintf("pool %s to have %d ready", name, n), func() bool {
		var err error
		p, err = s.Client.Pool(s.t.Context(), name)
		if err != nil {
			s.t.Fatalf("GET pool %s: %v", name, err)
		}
		return p.Ready == n && p.Starting == 0
	})
	return p
}

// pooled returns the ids of pool's live unclaimed backends.
func (s *server) pooled(name string) map[string]bool {
	s.t.Helper()
	bs, err := s.Client.LiveBackends(s.t.Context(), "")
	if err != nil {
		s.t.Fatal(err)
	}
	ids := map[string]bool{}
	for _, b := range bs {
		if b.Pool == name && b.Key == "" && b.State == berth.StateReady {
			ids[b.ID] = true
		}
	}
	return ids
}

// get GETs url (a backend's, through the proxy) and decodes its JSON.
func get(t *testing.T, url string, out any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %s", url, resp.Status, body)
	}
	if err := json.Unmarshal(body, out); err != nil {
		t.Fatalf("GET %s: %v: %s", url, err, body)
	}
}

func put(t *testing.T, url, body string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPut, url, strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("PUT %s: %s %s", url, resp.Status, b)
	}
}

// identity is what the test backend's /identity says.
type identity struct {
	BackendID     string  `json:"backend_id"`
	Pool          string  `json:"pool"`
	Key           string  `json:"key"`
	FencingToken  int64   `json:"fencing_token"`
	Claimed       bool    `json:"claimed"`
	LoadedState   *string `json:"loaded_state"`
	PreclaimState int     `json:"preclaim_state_status"`
}

// backendPIDs returns the pids of running test backends of backend id.
func backendPIDs(id string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil {
			continue
		}
		if bytes.Contains(env, []byte("\x00BERTH_BACKEND_ID="+id+"\x00")) || bytes.HasPrefix(env, []byte("BERTH_BACKEND_ID="+id+"\x00")) {
			var pid int
			fmt.Sscan(e.Name(), &pid)
			if stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat")); err == nil && !bytes.Contains(stat, []byte(") Z ")) {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

func connect(t *testing.T, s *server, req api.ConnectRequest) *api.ConnectResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	resp, err := s.Client.Connect(ctx, req)
	if err != nil {
		t.Fatalf("connect %s: %v", req.Key, err)
	}
	return resp
}

// eventually polls cond until it holds or d passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func tail(s string, n int) string {
	ls := strings.Split(s, "\n")
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	return strings.Join(ls, "\n")
}

// metric returns the value of the sample named exactly name (labels
// included, as in the text format) on /metrics, or "".
func (s *server) metric(name string) string {
	s.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, s.API+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+apiKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return v
		}
	}
	return ""
}
