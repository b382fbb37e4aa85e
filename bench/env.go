package bench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
)

// ServerInfo is the line `berth bench-server` prints once it is up.
type ServerInfo struct {
	API      string   `json:"api"`
	Proxy    string   `json:"proxy"`
	Debug    string   `json:"debug"`
	Runtimes []string `json:"runtimes"`
	PID      int      `json:"pid"`
}

// MemStats is what the bench server's /debug/memstats returns.
type MemStats struct {
	HeapInuse  uint64 `json:"heap_inuse"`
	StackInuse uint64 `json:"stack_inuse"`
	Sys        uint64 `json:"sys"`
	Goroutines int    `json:"goroutines"`
}

// env is everything the scenarios share: the temp dir, the backend, the
// Berth server, and the lazily started baselines.
type env struct {
	cfg     Config
	dir     string
	log     func(format string, args ...any)
	verbose func(format string, args ...any)

	// backend is the command line of the backend binary; static says it is
	// a static binary that can run FROM scratch.
	backend []string
	static  bool

	berth *berthServer
	api   *api.Client
	hc    *http.Client // control API calls, keep-alive

	// live is a backend held for the proxy scenarios: every figure that
	// compares Berth with "direct" or nginx uses this one process.
	live *liveBackend

	wrk *wrk
	// nofile is the open-files limit every process here has.
	nofile int

	nginxOnce sync.Once
	nginx     *nginxServer
	nginxErr  error

	// Berth on Kubernetes (kubernetes.go), started on first use.
	kubeOnce    sync.Once
	kube        *kubeBench
	kubeErr     error
	kubeBerth   *berthServer
	kubeBackend *exec.Cmd

	// Replicas on PostgreSQL (replicas.go), started on first use.
	repMu       sync.Mutex
	replicas    []*berthServer
	repClients  []*api.Client
	repStore    string // the store URL, in repSchema
	repSchema   string
	repAPIKey   string
	repTokenKey string
}

type liveBackend struct {
	id     string
	token  string
	direct string // host:port of the backend itself
	proxy  string // host:port of Berth's proxy
	prefix string // "/<token>"
	pid    int    // of the backend process; 0 if it did not say
}

// ask GETs url and returns the body of its 200.
func (e *env) ask(ctx context.Context, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	r, err := e.hc.Do(req)
	if err != nil {
		return "", err
	}
	defer r.Body.Close()
	b, err := io.ReadAll(r.Body)
	if err != nil {
		return "", err
	}
	if r.StatusCode != http.StatusOK {
		return "", errors.New(r.Status)
	}
	return string(b), nil
}

// spawnConfig is the spawn every scenario uses: the bench backend, a short
// grace period (it exits on SIGTERM at once), no state.
func (e *env) spawnConfig(maxIdle int) *berth.SpawnConfig {
	grace := 1
	return &berth.SpawnConfig{
		Command:        e.backend,
		MaxIdleSeconds: &maxIdle,
		GraceSeconds:   &grace,
	}
}

func newEnv(ctx context.Context, cfg Config) (*env, error) {
	dir, err := os.MkdirTemp("", "berth-bench-")
	if err != nil {
		return nil, err
	}
	e := &env{cfg: cfg, dir: dir}
	e.log = func(format string, args ...any) { fmt.Fprintf(cfg.Log, "bench: "+format+"\n", args...) }
	e.verbose = func(string, ...any) {}
	if cfg.Verbose {
		e.verbose = e.log
	}
	e.hc = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256, MaxConnsPerHost: 0}}
	if e.nofile, err = raiseFileLimit(4*cfg.idleConns() + 4096); err != nil {
		e.log("%v", err)
	}
	if err := e.findBackend(ctx); err != nil {
		e.close()
		return nil, err
	}
	e.wrk = findWrk(dir)
	if err := e.startBerth(ctx); err != nil {
		e.close()
		return nil, err
	}
	return e, nil
}

func (e *env) close() {
	if e.nginx != nil {
		e.nginx.stop()
	}
	if e.berth != nil {
		if err := e.berth.stop(); err != nil {
			e.log("stop Berth: %v", err)
		}
	}
	e.stopReplicas()
	e.stopKube()
	if e.cfg.KeepDir {
		e.log("kept %s", e.dir)
		return
	}
	os.RemoveAll(e.dir)
}

// raiseFileLimit lifts RLIMIT_NOFILE to want, raising the hard limit
// when allowed (CAP_SYS_RESOURCE), and returns the limit it got. Children
// inherit it: Berth needs two descriptors per proxied WebSocket.
func raiseFileLimit(want int) (int, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	w := uint64(want)
	if lim.Max < w {
		if n, err := os.ReadFile("/proc/sys/fs/nr_open"); err == nil {
			if max, err := strconv.ParseUint(strings.TrimSpace(string(n)), 10, 64); err == nil && max < w {
				w = max
			}
		}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: w, Max: w}); err == nil {
			return int(w), nil
		}
		w = lim.Max
	}
	// Setrlimit also tells os/exec to pass this limit on, rather than the
	// one the program started with.
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: w, Max: lim.Max}); err != nil {
		return int(lim.Cur), err
	}
	if lim.Max < uint64(want) {
		return int(w), fmt.Errorf("open files are limited to %d (hard limit; raising it needs CAP_SYS_RESOURCE), less than the %d wanted: the idle-WebSocket scenario holds fewer connections", lim.Max, want)
	}
	return int(w), nil
}

// findBackend settles the backend command: --backend, else a static build
// of internal/benchbackend/cmd/benchbackend (needs the go command and this
// module), else this binary's bench-backend subcommand.
func (e *env) findBackend(ctx context.Context) error {
	if len(e.cfg.Backend) > 0 {
		p, err := filepath.Abs(e.cfg.Backend[0])
		if err != nil {
			return err
		}
		e.backend = append([]string{p}, e.cfg.Backend[1:]...)
		e.static = isStatic(p)
		return nil
	}
	out := filepath.Join(e.dir, "benchbackend")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, BackendPackage)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err == nil {
		e.backend, e.static = []string{out}, true
		e.verbose("backend: built %s", BackendPackage)
		return nil
	} else if len(e.cfg.BackendFallback) == 0 {
		return fmt.Errorf("build the bench backend: %v\n%s", err, msg)
	} else {
		e.log("could not build %s (%v); spawning %s instead", BackendPackage, strings.TrimSpace(string(msg)), strings.Join(e.cfg.BackendFallback, " "))
	}
	e.backend = e.cfg.BackendFallback
	e.static = false
	return nil
}

// BackendPackage is the backend the bench builds and spawns.
const BackendPackage = "github.com/berthhq/berth/internal/benchbackend/cmd/benchbackend"

// isStatic reports whether the ELF file at path has no program interpreter
// (so no dynamic loader, so it runs in an empty image).
func isStatic(path string) bool {
	f, err := elf.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false
		}
	}
	return true
}

// berthServer is Berth running as a child process: the bench's clients and
// the backends are never in its address space, so its memory and CPU
// profiles are Berth's alone.
type berthServer struct {
	ServerInfo
	cmd     *exec.Cmd
	apiKey  string
	logPath string
	done    chan struct{}
	waitErr error
}

func (e *env) startBerth(ctx context.Context) error {
	key := make([]byte, 16)
	rand.Read(key)
	var extra []string
	if e.cfg.ProxyGoroutines {
		extra = append(extra, "--proxy-goroutines")
	}
	b, err := e.startServer(ctx, "berth", hex.EncodeToString(key), extra...)
	if err != nil {
		return err
	}
	e.berth = b
	e.api = api.NewClient(b.API, b.apiKey, e.hc)
	e.log("Berth is up (pid %d, runtimes %s; log %s)", b.PID, strings.Join(b.Runtimes, ", "), b.logPath)
	e.verbose("Berth API %s, proxy %s, debug %s", b.API, b.Proxy, b.Debug)
	return nil
}

// startServer starts a bench server named name (its data dir and log are
// named after it) with apiKey and serve's flags extra, and waits until it
// is up. The caller stops it.
func (e *env) startServer(ctx context.Context, name, apiKey string, extra ...string) (*berthServer, error) {
	b := &berthServer{apiKey: apiKey, logPath: filepath.Join(e.dir, name+".log"), done: make(chan struct{})}
	logf, err := os.Create(b.logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	dataDir := filepath.Join(e.dir, "data")
	if name != "berth" {
		dataDir = filepath.Join(e.dir, "data-"+name)
	}
	args := append(e.cfg.ServerCommand[1:len(e.cfg.ServerCommand):len(e.cfg.ServerCommand)],
		"--data-dir", dataDir,
		"--api-addr", "127.0.0.1:0",
		"--proxy-addr", "127.0.0.1:0",
		"--backend-api-addr", "127.0.0.1:0",
		"--runtime", "auto",
		"--log-level", "warn",
		"--shutdown-timeout", "30s",
	)
	args = append(args, extra...)
	// Not exec.CommandContext: the server is stopped with SIGTERM and given
	// time to stop its backends, even when the bench is interrupted.
	cmd := exec.Command(e.cfg.ServerCommand[0], args...)
	cmd.Env = append(withoutBerthEnv(os.Environ()), "BERTH_API_KEY="+b.apiKey)
	cmd.Stderr = logf
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start Berth (%s): %w", strings.Join(e.cfg.ServerCommand, " "), err)
	}
	b.cmd = cmd
	infoC := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		found := false
		for sc.Scan() {
			if !found {
				found = true
				infoC <- json.Unmarshal(sc.Bytes(), &b.ServerInfo)
			}
		}
		if !found {
			infoC <- errors.New("Berth exited before it was up")
		}
		io.Copy(io.Discard, stdout)
	}()
	go func() {
		b.waitErr = cmd.Wait()
		close(b.done)
	}()
	select {
	case err = <-infoC:
	case <-time.After(60 * time.Second):
		err = errors.New("Berth did not come up within 60s")
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		b.stop()
		return nil, fmt.Errorf("start Berth (%s): %w\n%s", name, err, tail(b.logPath, 2000))
	}
	return b, nil
}

// withoutBerthEnv drops BERTH_* variables, which would override the flags
// the bench gives its server.
func withoutBerthEnv(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, "BERTH_") {
			out = append(out, kv)
		}
	}
	return out
}

func (b *berthServer) alive() bool {
	select {
	case <-b.done:
		return false
	default:
		return true
	}
}

// stop asks Berth to shut down (it stops its backends first) and kills it
// if it takes longer than a minute.
func (b *berthServer) stop() error {
	if !b.alive() {
		return nil
	}
	b.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-b.done:
		if b.waitErr != nil {
			return fmt.Errorf("%w\n%s", b.waitErr, tail(b.logPath, 2000))
		}
		return nil
	case <-time.After(60 * time.Second):
		b.cmd.Process.Kill()
		<-b.done
		return errors.New("Berth did not stop within 60s; killed")
	}
}

// rss is the server's resident set size in bytes, from /proc.
func (b *berthServer) rss() (uint64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", b.PID))
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmRSS in /proc/PID/status")
}

// memStats asks the server for its Go memory statistics; free returns
// freed memory to the OS first, so that RSS reads right after it mean
// something.
func (e *env) memStats(ctx context.Context, free bool) (MemStats, error) {
	var ms MemStats
	u := e.berth.Debug + "/debug/memstats"
	if free {
		u += "?free=1"
	}
	err := e.getJSON(ctx, u, &ms)
	return ms, err
}

func (e *env) getJSON(ctx context.Context, u string, v any) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	res, err := e.hc.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", u, res.Status)
	}
	return json.NewDecoder(res.Body).Decode(v)
}

// liveCount is the number of backends Berth has not finished terminating.
func (e *env) liveCount(ctx context.Context) (int, error) {
	var h struct {
		Backends int `json:"backends"`
	}
	err := e.getJSON(ctx, e.berth.API+"/healthz", &h)
	return h.Backends, err
}

// waitLive waits until at most n backends are live, for up to d.
func (e *env) waitLive(ctx context.Context, n int, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		got, err := e.liveCount(ctx)
		if err != nil {
			return err
		}
		if got <= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d backends still live after %s (want ≤ %d)", got, d, n)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// liveBackend returns the backend the proxy scenarios share, spawning it
// on first use.
func (e *env) liveBackend(ctx context.Context) (*liveBackend, error) {
	if e.live != nil {
		return e.live, nil
	}
	res, err := e.api.Connect(ctx, api.ConnectRequest{Key: "bench", Spawn: e.spawnConfig(3600), User: liveUser, Wait: true})
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	if res.State != berth.StateReady {
		return nil, fmt.Errorf("the bench backend is %s, not ready (%s)", res.State, res.Reason)
	}
	u, err := url.Parse(res.URL)
	if err != nil {
		return nil, err
	}
	lb := &liveBackend{id: res.BackendID, token: res.Token, proxy: u.Host, prefix: strings.TrimSuffix(u.Path, "/")}
	// The backend tells its own port, so the baselines reach this very
	// process, and its process ID, so the throughput scenario can meter it.
	port, err := e.ask(ctx, res.URL+"port")
	if err != nil {
		return nil, fmt.Errorf("ask the backend its port: %w", err)
	}
	lb.direct = net.JoinHostPort("127.0.0.1", port)
	pid, err := e.ask(ctx, res.URL+"pid")
	if err == nil {
		lb.pid, err = strconv.Atoi(pid)
	}
	if err != nil {
		lb.pid = 0
		e.verbose("the backend did not tell its process ID (%v): its CPU is not metered", err)
	}
	e.live = lb
	e.verbose("live backend %s: direct %s, proxy %s", lb.id, lb.direct, lb.proxy)
	return lb, nil
}

// terminate stops a backend at once and waits until Berth has recorded its
// end, so the next measurement does not share the machine with it.
func (e *env) terminate(ctx context.Context, id string) error {
	return terminateVia(ctx, e.api, id)
}

// terminateVia is terminate through the API of c.
func terminateVia(ctx context.Context, c *api.Client, id string) error {
	if err := c.Terminate(ctx, id, true); err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := c.Backend(ctx, id)
		if err != nil {
			return err
		}
		if b.State == berth.StateTerminated {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("backend %s still %s 30s after a hard terminate", id, b.State)
		}
		time.Sleep(time.Millisecond)
	}
}

// tail returns the last n bytes of a file, for error messages.
func tail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > n {
		f.Seek(-n, io.SeekEnd)
	}
	b, _ := io.ReadAll(f)
	return string(b)
}

// freePort returns a port that is free right now for a listener on every
// interface. It hands out ports below the kernel's ephemeral range, in
// turn: a port from that range (what listening on port 0 gives) can be
// taken by any outgoing connection on the machine between the check and
// the backend's own listen, which under load makes backends fail to start
// (EADDRINUSE).
func freePort() (int, error) {
	ports.Lock()
	defer ports.Unlock()
	if ports.lo == 0 {
		ports.lo, ports.hi = 10000, 32768
		if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
			if f := strings.Fields(string(b)); len(f) == 2 {
				if lo, err := strconv.Atoi(f[0]); err == nil && lo > ports.lo+1000 {
					ports.hi = lo
				}
			}
		}
		ports.next = ports.lo
	}
	for range ports.hi - ports.lo {
		p := ports.next
		ports.next++
		if ports.next >= ports.hi {
			ports.next = ports.lo
		}
		if l, err := net.Listen("tcp", ":"+strconv.Itoa(p)); err == nil {
			l.Close()
			return p, nil
		}
	}
	return 0, fmt.Errorf("no free port in %d-%d", ports.lo, ports.hi-1)
}

var ports struct {
	sync.Mutex
	lo, hi, next int
}

// nginxServer is nginx as a non-daemon child with a generated config.
type nginxServer struct {
	addr    string
	version string
	cmd     *exec.Cmd
	done    chan struct{}
}

// nginxFor starts nginx proxying to the live backend, once.
func (e *env) nginxFor(ctx context.Context, lb *liveBackend) (*nginxServer, error) {
	e.nginxOnce.Do(func() { e.nginx, e.nginxErr = e.startNginx(ctx, lb) })
	return e.nginx, e.nginxErr
}

// errNotInstalled marks a baseline that is not on this machine.
type errNotInstalled struct{ what, how string }

func (e *errNotInstalled) Error() string { return e.what + " is not installed (" + e.how + ")" }

// findNginx returns the path of nginx, looking in sbin directories that a
// non-root PATH may lack.
func findNginx() (string, error) {
	if bin, err := exec.LookPath("nginx"); err == nil {
		return bin, nil
	}
	for _, p := range []string{"/usr/sbin/nginx", "/usr/local/sbin/nginx"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", &errNotInstalled{"nginx", "apt-get install nginx"}
}

func (e *env) startNginx(ctx context.Context, lb *liveBackend) (*nginxServer, error) {
	bin, err := findNginx()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(e.dir, "nginx")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, []byte(nginxConfig(dir, addr, lb.direct, lb.id)), 0o644); err != nil {
		return nil, err
	}
	n, err := runNginx(bin, dir, conf, addr)
	if err != nil {
		return nil, err
	}
	// Up when it answers through to the backend.
	rc := newRawClient(addr, getRequest(addr, "/"))
	defer rc.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := rc.Do()
		if err == nil && st == http.StatusOK {
			break
		}
		select {
		case <-n.done:
			return nil, fmt.Errorf("nginx exited at start:\n%s", tail(filepath.Join(dir, "error.log"), 2000))
		case <-ctx.Done():
			n.stop()
			return nil, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			n.stop()
			return nil, fmt.Errorf("nginx did not answer within 10s (last: %d %v):\n%s", st, err, tail(filepath.Join(dir, "error.log"), 2000))
		}
	}
	e.verbose("nginx (%s) on %s → %s", n.version, addr, lb.direct)
	return n, nil
}

// liveUser is the user the live backend's connect names, which Berth's
// proxy passes to it as X-Berth-User.
const liveUser = "bench"

// secretLen is the length of a backend's secret (server.newSecret: 24
// random bytes in hex), for nginx's stand-in X-Berth-Secret.
const secretLen = 48

// nginxConfig proxies addr to upstream over a pool of keep-alive
// connections, with one worker per CPU and no access log: nginx as people
// tune it for a reverse proxy. /ws passes WebSocket upgrades.
//
// Toward the backend, outside /ws (where only the handshake is parsed), it
// sends the headers Berth's proxy sends, so that the
// backend parses the same request from both: Host and X-Forwarded-Host as
// the client sent its Host, X-Forwarded-For, X-Forwarded-Proto, and the
// X-Berth-* identity an application behind nginx would need as well (the
// backend's ID and user; for the secret, a placeholder of its length). Five
// headers more cost the Go backend 10 allocations and 1–2 µs per request,
// which would otherwise count against Berth's proxy.
func nginxConfig(dir, addr, upstream, backendID string) string {
	return fmt.Sprintf(`# generated by berth bench
daemon off;
master_process on;
worker_processes auto;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events {
    worker_connections 8192;
}
http {
    access_log off;
    client_body_temp_path %[1]s/client_body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
    keepalive_requests 1000000;
    upstream backend {
        server %[3]s;
        keepalive 256;
    }
    server {
        listen %[2]s;
        location /ws {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Host $host;
            proxy_read_timeout 1h;
        }
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Berth-Backend %[4]s;
            proxy_set_header X-Berth-User %[5]s;
            proxy_set_header X-Berth-Secret %[6]s;
        }
    }
}
`, dir, addr, upstream, backendID, liveUser, strings.Repeat("0", secretLen))
}

func (n *nginxServer) stop() {
	// SIGQUIT is nginx's graceful stop; the group catches the workers too.
	syscall.Kill(-n.cmd.Process.Pid, syscall.SIGQUIT)
	select {
	case <-n.done:
	case <-time.After(10 * time.Second):
		syscall.Kill(-n.cmd.Process.Pid, syscall.SIGKILL)
		<-n.done
	}
}

// clockTicks is USER_HZ, the unit of CPU times in /proc (100 on every
// Linux architecture Go supports).
const clockTicks = 100

// procCPU is the CPU time pid has used (user and system), from /proc.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("parse /proc/PID/stat")
	}
	f := strings.Fields(string(b[i+1:])) // f[0] is field 3
	if len(f) < 13 {
		return 0, errors.New("parse /proc/PID/stat")
	}
	u, err1 := strconv.ParseUint(f[11], 10, 64) // utime, field 14
	s, err2 := strconv.ParseUint(f[12], 10, 64) // stime, field 15
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return time.Duration(u+s) * time.Second / clockTicks, nil
}

// machineCPU returns the busy and total CPU time of the machine so far.
func machineCPU() (busy, total time.Duration) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return 0, 0
	}
	var sum, idle uint64
	for i, v := range f[1:] {
		n, _ := strconv.ParseUint(v, 10, 64)
		if i < 8 { // user … steal; guest time is already in user
			sum += n
		}
		if i == 3 || i == 4 { // idle, iowait
			idle += n
		}
	}
	tick := time.Second / clockTicks
	return time.Duration(sum-idle) * tick, time.Duration(sum) * tick
}

// cpuMeter measures CPU use over an interval: some processes' own, and
// the whole machine's.
type cpuMeter struct {
	pids        []int
	start       []time.Duration
	busy, total time.Duration
}

func meterCPU(pids ...int) *cpuMeter {
	m := &cpuMeter{pids: pids}
	for _, p := range pids {
		c, _ := procCPU(p)
		m.start = append(m.start, c)
	}
	m.busy, m.total = machineCPU()
	return m
}

// stop returns the CPU time the processes used since meterCPU, and the
// fraction of the machine's CPU that was busy.
func (m *cpuMeter) stop() (used time.Duration, machineBusy float64) {
	for i, p := range m.pids {
		c, _ := procCPU(p)
		used += c - m.start[i]
	}
	busy, total := machineCPU()
	if total > m.total {
		machineBusy = float64(busy-m.busy) / float64(total-m.total)
	}
	return used, machineBusy
}

// pids of nginx: the master and its workers.
func (n *nginxServer) pids() []int {
	pids := []int{n.cmd.Process.Pid}
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", n.cmd.Process.Pid, n.cmd.Process.Pid))
	for _, f := range strings.Fields(string(b)) {
		if p, err := strconv.Atoi(f); err == nil {
			pids = append(pids, p)
		}
	}
	return pids
}

// runNginx starts nginx (bin) with the configuration at conf, its prefix
// and error log in dir, in a process group of its own; addr is where the
// configuration has it listen.
func runNginx(bin, dir, conf, addr string) (*nginxServer, error) {
	version := "nginx"
	if out, err := exec.Command(bin, "-v").CombinedOutput(); err == nil {
		version = strings.TrimPrefix(strings.TrimSpace(string(out)), "nginx version: ")
	}
	cmd := exec.Command(bin, "-p", dir, "-c", conf, "-e", filepath.Join(dir, "error.log"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start nginx: %w", err)
	}
	n := &nginxServer{addr: addr, version: version, cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); close(n.done) }()
	return n, nil
}
