package e2e

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
	"github.com/berthhq/berth/api/apitest"
	"github.com/berthhq/berth/internal/testbin"
	"github.com/berthhq/berth/store/postgres/pgtest"
)

// opts says how to start one Berth.
type opts struct {
	// serve runs `berth serve` with apiKey instead of `berth dev`.
	serve  bool
	apiKey string
	// demo lets berth dev start its demo backend (off by default: most tests
	// want an empty server).
	demo bool
	// dataDir, when set, is reused: that is how a test restarts Berth on
	// the same records.
	dataDir string
	// tokenKey is passed as --token-key when set.
	tokenKey string
	// runtime is passed as --runtime (default process).
	runtime string
	// backendAPI, when set, is the backend API's address: a restart on the
	// same configuration keeps it, as backends' BERTH_STATE_URL names it.
	backendAPI string
	// extra flags for berth (--blobs, --volume-root, --max-state-bytes, …).
	extra []string
}

// addrs are the three listen addresses of one Berth.
type addrs struct{ api, proxy, backendAPI string }

func freeAddrs(t *testing.T) *addrs {
	t.Helper()
	return &addrs{api: testbin.FreeAddr(t), proxy: testbin.FreeAddr(t), backendAPI: testbin.FreeAddr(t)}
}

// server is one running berth process.
type server struct {
	t       *testing.T
	opts    opts
	API     string // control API base URL, http://127.0.0.1:N
	Proxy   string // proxy base URL
	DataDir string
	Client  *api.Client

	cmd     *exec.Cmd
	out     *testbin.SyncBuffer
	done    chan struct{}
	waitErr error
	killed  bool

	mu         sync.Mutex
	mismatches []error // answers of its control API that the OpenAPI document does not describe
	apiProxy   *httptest.Server
}

// openAPI is api.OpenAPI, loaded by TestMain.
var openAPI *apitest.Doc

// controlAPIs are the running Berths by control API host:port, so each
// answer's mismatches go to the Berth (and test) that gave it.
var controlAPIs = struct {
	sync.Mutex
	m map[string]*server
}{m: map[string]*server{}}

// checked wraps a transport so every answer from a control API started by
// this suite is checked against the OpenAPI document. TestMain wraps
// http.DefaultTransport; a test with its own transport wraps it too.
func checked(base http.RoundTripper) *apitest.Transport {
	return &apitest.Transport{Base: base, Doc: openAPI, For: func(req *http.Request) func(error) {
		controlAPIs.Lock()
		s := controlAPIs.m[req.URL.Host]
		controlAPIs.Unlock()
		if s == nil {
			return nil
		}
		return s.mismatch
	}}
}

// checkedAPI returns the address of a reverse proxy to the control API
// whose answers are checked against the OpenAPI document, for the clients
// this process does not run: the berth CLI.
func (s *server) checkedAPI() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.apiProxy == nil {
		u, err := url.Parse(s.API)
		if err != nil {
			s.t.Fatal(err)
		}
		rp := httputil.NewSingleHostReverseProxy(u) // through http.DefaultTransport, checked
		rp.FlushInterval = -1                       // followed logs and events as they come
		s.apiProxy = httptest.NewServer(rp)
		s.t.Cleanup(s.apiProxy.Close)
	}
	return s.apiProxy.URL
}

func (s *server) mismatch(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mismatches = append(s.mismatches, err)
}

// reportMismatches fails the test for each answer the OpenAPI document does
// not describe.
func (s *server) reportMismatches() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, err := range s.mismatches {
		s.t.Errorf("control API answer does not match api/openapi.json: %v", err)
	}
	s.mismatches = nil
}

// start runs berth dev (or serve) on fresh loopback ports and a fresh data
// dir, waits until /healthz answers, and registers a cleanup that stops it
// with SIGINT and checks that it exits 0 and leaves no backend running.
func start(t *testing.T, o opts) *server {
	t.Helper()
	s := launch(t, o)
	s.waitHealthy()
	return s
}

// launch is start without waiting for /healthz.
func launch(t *testing.T, o opts) *server {
	t.Helper()
	if o.dataDir == "" {
		o.dataDir = t.TempDir()
	}
	ad := freeAddrs(t)
	if o.backendAPI != "" {
		ad.backendAPI = o.backendAPI
	}
	verb := "dev"
	if o.serve {
		verb = "serve"
	}
	args := []string{verb,
		"--api-addr", ad.api,
		"--proxy-addr", ad.proxy,
		"--backend-api-addr", ad.backendAPI,
		"--data-dir", o.dataDir,
		"--runtime", cmp.Or(o.runtime, "process"),
		"--log-level", "debug",
	}
	if !o.serve && !o.demo {
		args = append(args, "--no-demo")
	}
	if o.serve {
		args = append(args, "--api-key", o.apiKey)
	}
	if onPostgres(t) {
		args = append(args, "--store", pgStore(t))
		if o.tokenKey == "" {
			o.tokenKey = "e2e-on-postgres-token-key-0123456789"
		}
	}
	if o.tokenKey != "" {
		args = append(args, "--token-key", o.tokenKey)
	}
	args = append(args, o.extra...)
	s := &server{
		t:       t,
		opts:    o,
		API:     "http://" + ad.api,
		Proxy:   "http://" + ad.proxy,
		DataDir: o.dataDir,
		out:     &testbin.SyncBuffer{},
		done:    make(chan struct{}),
	}
	s.Client = api.NewClient(s.API, o.apiKey, nil)
	controlAPIs.Lock()
	controlAPIs.m[ad.api] = s
	controlAPIs.Unlock()
	s.cmd = exec.Command(bin.berth, args...)
	s.cmd.Dir = o.dataDir
	s.cmd.Env = testbin.CleanEnv()
	s.cmd.Stdout = s.out
	s.cmd.Stderr = s.out
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start berth: %v", err)
	}
	go func() {
		s.waitErr = s.cmd.Wait()
		close(s.done)
	}()
	t.Cleanup(s.stop)
	return s
}

// healthClient gives up on a server that accepts but does not answer.
var healthClient = &http.Client{Timeout: time.Second}

func (s *server) waitHealthy() {
	s.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		req, _ := http.NewRequest(http.MethodGet, s.API+"/healthz", nil)
		if s.opts.apiKey != "" {
			req.Header.Set("Authorization", "Bearer "+s.opts.apiKey)
		}
		resp, err := healthClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-s.done:
			s.t.Fatalf("berth exited before it was healthy: %v\n%s", s.waitErr, s.out.String())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("berth did not answer %s/healthz within 20s (last error %v)\n%s", s.API, err, s.out.String())
		}
	}
}

// kill SIGKILLs berth itself (not its backends, which live in their own
// process groups) and waits for it to be gone.
func (s *server) kill() {
	s.t.Helper()
	s.killed = true
	if err := s.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		s.t.Fatalf("SIGKILL berth: %v", err)
	}
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		s.t.Fatal("berth did not die from SIGKILL within 10s")
	}
}

// stop is the cleanup: SIGINT, exit status 0, no backend process left.
func (s *server) stop() {
	t := s.t
	defer s.reportMismatches()
	defer func() {
		if t.Failed() {
			t.Logf("berth %s output (tail):\n%s", s.API, tail(s.out.String(), 150))
		}
	}()
	if s.killed {
		return
	}
	select {
	case <-s.done:
		t.Errorf("berth exited by itself before the test ended: %v", s.waitErr)
		return
	default:
	}
	// Learn every backend id this data dir ever had, to look for survivors.
	ids := map[string]bool{}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	if list, err := s.Client.Backends(ctx, "", ""); err == nil {
		for _, b := range list {
			ids[b.ID] = true
		}
	}
	cancel()

	start := time.Now()
	if err := s.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Errorf("SIGINT berth: %v", err)
	}
	select {
	case <-s.done:
	case <-time.After(60 * time.Second):
		t.Errorf("berth did not exit within 60s of SIGINT; killing it")
		s.cmd.Process.Kill()
		<-s.done
	}
	if s.waitErr != nil {
		t.Errorf("berth exited with %v after SIGINT (want exit status 0)", s.waitErr)
	}
	t.Logf("berth stopped %v after SIGINT", time.Since(start).Round(time.Millisecond))

	// Nothing berth started may outlive it.
	var left []proc
	deadline := time.Now().Add(3 * time.Second)
	for {
		left = left[:0]
		for _, p := range procs() {
			if ids[p.env["BERTH_BACKEND_ID"]] || under(p.cwd, s.DataDir) {
				left = append(left, p)
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, p := range left {
		t.Errorf("process %d (%s, backend %s) survived berth's graceful stop; killing it", p.pid, p.cmdline, p.env["BERTH_BACKEND_ID"])
		syscall.Kill(p.pid, syscall.SIGKILL)
	}
}

func under(path, dir string) bool {
	if path == "" {
		return false
	}
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

func tail(s string, lines int) string {
	ls := strings.Split(s, "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}

// ---- control API helpers ----

func testCtx(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

func ptr[T any](v T) *T { return &v }

// tb returns a spawn config that runs the test backend with env knobs.
func tb(env map[string]string) *berth.SpawnConfig {
	return &berth.SpawnConfig{
		Command:      []string{bin.testbackend},
		Env:          env,
		GraceSeconds: ptr(2),
	}
}

// connect calls POST /v1/connect and fails the test on an error.
func (s *server) connect(t *testing.T, req api.ConnectRequest) *api.ConnectResponse {
	t.Helper()
	resp, err := s.Client.Connect(testCtx(t, 30*time.Second), req)
	if err != nil {
		t.Fatalf("connect %q: %v", req.Key, err)
	}
	return resp
}

// connectFailed calls POST /v1/connect with wait for a backend that must
// end instead of becoming ready, and returns the 502 backend_failed error,
// failing the test if the answer is anything else or carries a URL.
func (s *server) connectFailed(t *testing.T, req api.ConnectRequest) api.ErrorDetail {
	t.Helper()
	resp, body := s.do(t, http.MethodPost, "/v1/connect", connectJSON(t, req))
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("connect with wait to a backend that ends: %d %s, want 502 backend_failed", resp.StatusCode, body)
	}
	e := apiError(t, body)
	if e.Code != api.CodeBackendFailed || e.BackendID == "" || e.Reason == "" {
		t.Errorf("error %+v, want code backend_failed with the backend and its reason", e)
	}
	if bytes.Contains(body, []byte(`"url"`)) || bytes.Contains(body, []byte(s.Proxy)) {
		t.Errorf("the error body %s hands out a URL to a backend that ended", body)
	}
	return e
}

// spawnReady connects with wait and requires the backend to be ready.
func (s *server) spawnReady(t *testing.T, key string, spawn *berth.SpawnConfig) *api.ConnectResponse {
	t.Helper()
	resp := s.connect(t, api.ConnectRequest{Key: key, Spawn: spawn, User: "e2e", Wait: true, WaitTimeoutSeconds: 20})
	if resp.State != berth.StateReady {
		t.Fatalf("connect %q with wait: state %q reason %q, want ready", key, resp.State, resp.Reason)
	}
	return resp
}

func (s *server) backend(t *testing.T, id string) *berth.Backend {
	t.Helper()
	b, err := s.Client.Backend(testCtx(t, 10*time.Second), id)
	if err != nil {
		t.Fatalf("GET backend %s: %v", id, err)
	}
	return b
}

// waitState polls the backend until it reaches state (or a later one) and
// returns it. It fails the test after timeout.
func (s *server) waitState(t *testing.T, id string, state berth.State, timeout time.Duration) *berth.Backend {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		b := s.backend(t, id)
		if b.State.Rank() >= state.Rank() {
			return b
		}
		if time.Now().After(deadline) {
			t.Fatalf("backend %s still %q after %v, want %q", id, b.State, timeout, state)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (s *server) waitTerminated(t *testing.T, id string, timeout time.Duration) *berth.Backend {
	t.Helper()
	return s.waitState(t, id, berth.StateTerminated, timeout)
}

func (s *server) terminate(t *testing.T, id string, hard bool) {
	t.Helper()
	resp, body := s.do(t, http.MethodPost, "/v1/backends/"+id+"/terminate", fmt.Sprintf(`{"hard":%v}`, hard))
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("terminate %s: %d %s, want 202", id, resp.StatusCode, body)
	}
}

// do sends a raw request to the control API (with the API key, if any) and
// returns the response with its body read.
func (s *server) do(t *testing.T, method, path, body string) (*http.Response, []byte) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(testCtx(t, 30*time.Second), method, s.API+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if s.opts.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+s.opts.apiKey)
	}
	return send(t, req)
}

func send(t *testing.T, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", req.Method, req.URL, err)
	}
	return resp, b
}

// get fetches a URL (through the proxy, usually) and returns status and body.
func get(t *testing.T, url string, hdr http.Header) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(testCtx(t, 30*time.Second), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range hdr {
		req.Header[k] = vs
	}
	return send(t, req)
}

// ---- events ----

// sseEvent is one Server-Sent Event as it came over the wire.
type sseEvent struct {
	id, typ, data string
}

// readSSE reads events from r until the stream ends or fn returns false. It
// is deliberately independent of the api package's reader.
func readSSE(r io.Reader, fn func(sseEvent) bool) error {
	sc := bufio.NewScanner(r)
	var ev sseEvent
	var data []string
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			if data != nil {
				ev.data = strings.Join(data, "\n")
				if !fn(ev) {
					return nil
				}
			}
			ev, data = sseEvent{}, nil
			continue
		}
		if strings.HasPrefix(line, ":") {
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "id":
			ev.id = value
		case "event":
			ev.typ = value
		case "data":
			data = append(data, value)
		}
	}
	return sc.Err()
}

// history returns every state event of a terminated backend, read from its
// events stream (which must end by itself after terminated).
func (s *server) history(t *testing.T, id string) []api.StateEvent {
	t.Helper()
	ctx := testCtx(t, 10*time.Second)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.API+"/v1/backends/"+id+"/events", nil)
	if s.opts.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+s.opts.apiKey)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("events of %s: %v", id, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("events of %s: %d %s", id, resp.StatusCode, b)
	}
	var evs []api.StateEvent
	err = readSSE(resp.Body, func(e sseEvent) bool {
		if e.typ != "state" {
			return true
		}
		var se api.StateEvent
		if err := json.Unmarshal([]byte(e.data), &se); err != nil {
			t.Errorf("events of %s: bad data %q: %v", id, e.data, err)
		}
		evs = append(evs, se)
		return true
	})
	if err != nil {
		t.Fatalf("events of %s: stream did not end cleanly: %v (got %v)", id, err, evs)
	}
	return evs
}

// eventAt returns the time of the first event with the given state.
func eventAt(t *testing.T, evs []api.StateEvent, state berth.State) time.Time {
	t.Helper()
	for _, e := range evs {
		if e.State == state {
			at, err := time.Parse(time.RFC3339Nano, e.At)
			if err != nil {
				t.Fatalf("event %+v: bad time: %v", e, err)
			}
			return at
		}
	}
	t.Fatalf("no %q event in %+v", state, evs)
	return time.Time{}
}

func states(evs []api.StateEvent) []berth.State {
	var out []berth.State
	for _, e := range evs {
		out = append(out, e.State)
	}
	return out
}

// ---- processes ----

// proc is a process seen in /proc.
type proc struct {
	pid     int
	env     map[string]string
	cwd     string
	cmdline string
}

// procs lists live (non-zombie) processes other than this one, with their
// environment; backends are recognised by BERTH_BACKEND_ID.
func procs() []proc {
	ents, _ := os.ReadDir("/proc")
	var out []proc
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() || !alive(pid) {
			continue
		}
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil {
			continue
		}
		p := proc{pid: pid, env: map[string]string{}}
		for _, kv := range bytes.Split(raw, []byte{0}) {
			if k, v, ok := strings.Cut(string(kv), "="); ok {
				p.env[k] = v
			}
		}
		p.cwd, _ = os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
		cl, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		p.cmdline = strings.TrimSpace(strings.ReplaceAll(string(cl), "\x00", " "))
		out = append(out, p)
	}
	return out
}

// backendPIDs returns the processes running for a backend (the program and
// anything it started, which inherit its environment).
func backendPIDs(id string) []int {
	var pids []int
	for _, p := range procs() {
		if p.env["BERTH_BACKEND_ID"] == id {
			pids = append(pids, p.pid)
		}
	}
	slices.Sort(pids)
	return pids
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 || i+2 >= len(stat) {
		return false
	}
	return stat[i+2] != 'Z' && stat[i+2] != 'X'
}

// waitGone polls until pid is gone (or a zombie), failing after timeout.
func waitGone(t *testing.T, pid int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Errorf("process %d still alive after %v", pid, timeout)
			syscall.Kill(pid, syscall.SIGKILL)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// apiError decodes a JSON error body and fails the test if it is not one.
func apiError(t *testing.T, body []byte) api.ErrorDetail {
	t.Helper()
	var eb api.ErrorBody
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&eb); err != nil {
		t.Fatalf("error body %q is not {\"error\":{\"code\",\"message\",\"field\"}}: %v", body, err)
	}
	if eb.Error.Code == "" || eb.Error.Message == "" {
		t.Errorf("error body %q lacks code or message", body)
	}
	return eb.Error
}

// connectJSON encodes a connect request as a raw body.
func connectJSON(t *testing.T, req api.ConnectRequest) string {
	t.Helper()
	b, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// decode parses a JSON body into a T, failing the test if it cannot.
func decode[T any](t *testing.T, body []byte) *T {
	t.Helper()
	v := new(T)
	if err := json.Unmarshal(body, v); err != nil {
		t.Fatalf("decode %T from %q: %v", v, body, err)
	}
	return v
}

// onPostgres reports whether t runs under TestOnPostgres: every Berth it
// starts then keeps its records in PostgreSQL (a schema per test, which
// makes it a replica of one) instead of SQLite.
func onPostgres(t *testing.T) bool { return strings.HasPrefix(t.Name(), "TestOnPostgres/") }

// pgSchemas holds each test's PostgreSQL store, so a Berth the test starts
// again finds its records.
var pgSchemas sync.Map // test name → URL

func pgStore(t *testing.T) string {
	if u, ok := pgSchemas.Load(t.Name()); ok {
		return u.(string)
	}
	u := pgtest.URL(t, "e2e")
	pgSchemas.Store(t.Name(), u)
	return u
}
