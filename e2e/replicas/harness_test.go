package replicas

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"fmt"
	"net/http"
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
	"github.com/berthhq/berth/internal/testbin"
	"github.com/berthhq/berth/lease"
	"github.com/berthhq/berth/store/postgres/pgtest"
)

// leaseTTL is the replicas' lease in these tests: short, so a dead node's
// keys move within seconds (renewals every ~430 ms, own stop at 1.8 s,
// kill at 2.4 s).
const leaseTTL = 3 * time.Second

// leaseRenew is how often a replica renews its lease (and re-reads the
// nodes) with leaseTTL: lease.Scaled's proportion.
var leaseRenew = lease.Scaled(leaseTTL).RenewInterval

// cluster is several `berth serve` processes sharing one PostgreSQL schema,
// a token key, an API key and a blob directory, as replicas on several
// hosts would share a database, their configuration and blob storage.
type cluster struct {
	t        *testing.T
	store    string
	apiKey   string
	tokenKey string
	blobs    string
	shared   string // TB_LOCK_DIR and audit files of every backend
	runtime  string // process (default) or docker
	nodes    []*node
}

// node is one replica: a berth process with its own data dir and ports.
type node struct {
	c       *cluster
	id      string
	API     string // control API base URL
	Proxy   string // proxy base URL
	proxyAt string // host:port
	dataDir string
	Client  *api.Client
	extra   []string
	store   string // the store's URL as this node reaches it

	mu         sync.Mutex
	mismatches []error // answers the OpenAPI document does not describe
	cmd        *exec.Cmd
	out        *testbin.SyncBuffer
	done       chan struct{}
	waitErr    error
	killed     bool
}

// newCluster starts n replicas; via, when set, gives the last one its own
// way to the database.
func newCluster(t *testing.T, n int, via ...*relay) *cluster {
	t.Helper()
	return startCluster(t, n, "process", via...)
}

// startCluster is newCluster with the replicas' runtime.
func startCluster(t *testing.T, n int, runtime string, via ...*relay) *cluster {
	t.Helper()
	c := &cluster{
		runtime:  runtime,
		t:        t,
		store:    pgtest.URL(t, "replicas"),
		apiKey:   "replicas-test-key",
		tokenKey: "replicas-test-token-key-0123456789abcdef",
		shared:   t.TempDir(),
	}
	c.blobs = "file:" + filepath.Join(c.shared, "blobs")
	if err := os.Mkdir(filepath.Join(c.shared, "locks"), 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		nd := &node{c: c, id: fmt.Sprintf("n%d", i+1), store: c.store}
		if i == n-1 && len(via) > 0 {
			nd.store = via[0].via(t, c.store)
		}
		c.add(nd)
	}
	for _, nd := range c.nodes {
		nd.waitHealthy()
	}
	return c
}

// add starts one more replica.
func (c *cluster) add(nd *node) *node {
	c.t.Helper()
	nd.dataDir = c.t.TempDir()
	api, backendAPI := testbin.FreeAddr(c.t), testbin.FreeAddr(c.t)
	nd.proxyAt = testbin.FreeAddr(c.t)
	nd.API, nd.Proxy = "http://"+api, "http://"+nd.proxyAt
	nd.Client = api2(nd.API, c.apiKey)
	controlAPIs.Lock()
	controlAPIs.m[api] = nd
	controlAPIs.Unlock()
	nd.launch(api, backendAPI)
	c.nodes = append(c.nodes, nd)
	c.t.Cleanup(nd.stop)
	return nd
}

func api2(base, key string) *api.Client { return api.NewClient(base, key, nil) }

func (nd *node) launch(apiAddr, backendAPI string) {
	c := nd.c
	args := []string{"serve",
		"--api-addr", apiAddr, "--proxy-addr", nd.proxyAt, "--backend-api-addr", backendAPI,
		"--data-dir", nd.dataDir, "--runtime", cmp.Or(c.runtime, "process"), "--log-level", "debug",
		"--api-key", c.apiKey, "--token-key", c.tokenKey,
		"--blobs", c.blobs,
		"--node-id", nd.id, "--lease-ttl", leaseTTL.String(),
	}
	// The second replica finds its store in BERTH_STORE, as a deployment
	// that configures replicas through the environment does; the others
	// take --store.
	storeEnv := nd.id == "n2"
	if !storeEnv {
		args = append(args, "--store", nd.store)
	}
	args = append(args, nd.extra...)
	nd.mu.Lock()
	defer nd.mu.Unlock()
	nd.out = &testbin.SyncBuffer{}
	nd.done = make(chan struct{})
	nd.killed = false
	nd.cmd = exec.Command(bin.Berth, args...)
	nd.cmd.Dir = nd.dataDir
	nd.cmd.Env = testbin.CleanEnv()
	if storeEnv {
		nd.cmd.Env = append(nd.cmd.Env, "BERTH_STORE="+nd.store)
	}
	nd.cmd.Stdout, nd.cmd.Stderr = nd.out, nd.out
	if err := nd.cmd.Start(); err != nil {
		c.t.Fatalf("start %s: %v", nd.id, err)
	}
	cmd, done := nd.cmd, nd.done
	go func() {
		err := cmd.Wait()
		nd.mu.Lock()
		nd.waitErr = err
		nd.mu.Unlock()
		close(done)
	}()
}

// restart starts a killed node again on the same data dir and ports.
func (nd *node) restart() {
	nd.c.t.Helper()
	api := strings.TrimPrefix(nd.API, "http://")
	nd.launch(api, testbin.FreeAddr(nd.c.t))
	nd.waitHealthy()
}

func (nd *node) waitHealthy() {
	t := nd.c.t
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(nd.API + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-nd.done:
			t.Fatalf("%s exited before it was healthy: %v\n%s", nd.id, nd.waitErr, nd.out.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not answer /healthz within 30s\n%s", nd.id, nd.out.String())
		}
	}
}

// stopGracefully stops the replica with SIGINT, as a rolling restart
// does, and waits for it to exit 0.
func (nd *node) stopGracefully() {
	t := nd.c.t
	t.Helper()
	nd.mu.Lock()
	cmd, done := nd.cmd, nd.done
	nd.mu.Unlock()
	cmd.Process.Signal(os.Interrupt)
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatalf("%s did not exit within 60s of SIGINT", nd.id)
	}
	nd.mu.Lock()
	err := nd.waitErr
	nd.killed = true // stopped: the cleanup has nothing to stop
	nd.mu.Unlock()
	if err != nil {
		t.Fatalf("%s exited with %v after SIGINT", nd.id, err)
	}
}

// kill SIGKILLs the replica's berth process.
func (nd *node) kill() {
	t := nd.c.t
	t.Helper()
	nd.mu.Lock()
	nd.killed = true
	cmd, done := nd.cmd, nd.done
	nd.mu.Unlock()
	cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s did not die from SIGKILL", nd.id)
	}
}

// controlAPIs are the replicas' control APIs by host:port, for the
// OpenAPI check.
var controlAPIs = struct {
	sync.Mutex
	m map[string]*node
}{m: map[string]*node{}}

func nodeAt(host string) *node {
	controlAPIs.Lock()
	defer controlAPIs.Unlock()
	return controlAPIs.m[host]
}

func (nd *node) mismatch(err error) {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	nd.mismatches = append(nd.mismatches, err)
}

// stop is the cleanup: SIGINT and exit status 0, unless the test killed it;
// and every answer of its control API matched the OpenAPI document.
func (nd *node) stop() {
	t := nd.c.t
	defer func() {
		nd.mu.Lock()
		defer nd.mu.Unlock()
		for _, err := range nd.mismatches {
			t.Errorf("%s: an answer the OpenAPI document does not describe: %v", nd.id, err)
		}
	}()
	nd.mu.Lock()
	killed, cmd, done := nd.killed, nd.cmd, nd.done
	nd.mu.Unlock()
	defer func() {
		if t.Failed() {
			t.Logf("%s output (tail):\n%s", nd.id, tail(nd.out.String(), 80))
		}
	}()
	if killed {
		return
	}
	cmd.Process.Signal(os.Interrupt)
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Errorf("%s did not exit within 60s of SIGINT", nd.id)
		cmd.Process.Kill()
		<-done
	}
	nd.mu.Lock()
	err := nd.waitErr
	nd.mu.Unlock()
	if err != nil {
		t.Errorf("%s exited with %v after SIGINT, want status 0", nd.id, err)
	}
}

// spawn is a test backend whose processes take a per-key lock in the
// cluster's shared directory and append their life to an audit file there:
// two live holders of a key at once show as a VIOLATION line.
func (c *cluster) spawn() *berth.SpawnConfig {
	grace := 1
	return &berth.SpawnConfig{
		Command: []string{bin.TestBackend},
		Env: map[string]string{
			"TB_LOCK_DIR":   filepath.Join(c.shared, "locks"),
			"TB_AUDIT_FILE": filepath.Join(c.shared, "audit.log"),
		},
		GraceSeconds: &grace,
	}
}

// violations returns the audit's VIOLATION lines.
func (c *cluster) violations() []string {
	f, err := os.Open(filepath.Join(c.shared, "audit.log"))
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.Contains(sc.Text(), "VIOLATION") {
			out = append(out, sc.Text())
		}
	}
	return out
}

func (c *cluster) checkNoViolations() {
	c.t.Helper()
	if v := c.violations(); len(v) > 0 {
		c.t.Errorf("two live holders of a key at once:\n%s", strings.Join(v, "\n"))
	}
}

// auditLine is one line a test backend appended to the cluster's audit
// file: "tb-audit EVENT key=K backend=ID fence=N pid=P [more] at=NS".
type auditLine struct {
	event, key, backend string
	fence               int64
	late                bool // a lock taken only once another holder let go
	at                  time.Time
}

func (c *cluster) audit() []auditLine {
	c.t.Helper()
	f, err := os.Open(filepath.Join(c.shared, "audit.log"))
	if err != nil {
		c.t.Fatalf("the backends' audit: %v", err)
	}
	defer f.Close()
	var out []auditLine
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 2 || fs[0] != "tb-audit" {
			continue
		}
		l := auditLine{event: fs[1]}
		for _, kv := range fs[2:] {
			k, v, _ := strings.Cut(kv, "=")
			switch k {
			case "key":
				l.key = v
			case "backend":
				l.backend = v
			case "fence":
				l.fence, _ = strconv.ParseInt(v, 10, 64)
			case "late":
				l.late = v == "1"
			case "at":
				ns, _ := strconv.ParseInt(v, 10, 64)
				l.at = time.Unix(0, ns)
			}
		}
		if l.at.IsZero() {
			c.t.Fatalf("audit line without a time: %q", sc.Text())
		}
		out = append(out, l)
	}
	return out
}

// checkAudit checks, from what the backends themselves recorded (their
// fencing tokens, and the times they started and ended by this host's
// clock), that no key ever had two live holders: per key, in the order
// they started, each holder carries a larger fencing token than the one
// before, and the one before had ended by then (its own last line, a
// stop or an exit, came before; or, killed without a word, the kernel had
// released its lock: the next took it without waiting). It returns each
// key's holders' start lines in that order.
func (c *cluster) checkAudit() map[string][]auditLine {
	c.t.Helper()
	starts := map[string][]auditLine{}
	last := map[string]auditLine{} // each backend's last stop or exit
	for _, l := range c.audit() {
		switch l.event {
		case "start":
			starts[l.key] = append(starts[l.key], l)
		case "stop", "exit":
			last[l.backend] = l
		case "VIOLATION":
			c.t.Errorf("backend %s of key %s started while another held the key (fence %d)", l.backend, l.key, l.fence)
		case "locked":
			if l.late {
				c.t.Errorf("backend %s of key %s waited for another holder's lock", l.backend, l.key)
			}
		}
	}
	for key, ss := range starts {
		slices.SortFunc(ss, func(a, b auditLine) int { return a.at.Compare(b.at) })
		for i := 1; i < len(ss); i++ {
			prev, next := ss[i-1], ss[i]
			if next.fence <= prev.fence {
				c.t.Errorf("key %s: backend %s started after %s with fencing token %d, not more than its %d", key, next.backend, prev.backend, next.fence, prev.fence)
			}
			if end, ok := last[prev.backend]; ok && end.at.After(next.at) {
				c.t.Errorf("key %s: backend %s started at %s, before %s ended at %s", key, next.backend, next.at.Format(time.StampMicro), prev.backend, end.at.Format(time.StampMicro))
			}
		}
	}
	return starts
}

// backendProcs returns the pids of running test backends of backend id.
func backendProcs(id string) []int {
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

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
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

// metric returns the value of the sample named exactly name (with its
// labels, as in the text format) on nd's /metrics, or "" when absent.
func (nd *node) metric(t *testing.T, name string) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, nd.API+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+nd.c.apiKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
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
