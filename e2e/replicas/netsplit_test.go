package replicas

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
	"github.com/berthhq/berth/internal/testbin"
	"github.com/berthhq/berth/store/postgres/pgtest"
)

// Three replicas as containers, each a host of its own (its own network
// namespace and processes), from a FROM scratch image of the static berth
// binary, on two Docker networks the test creates: "peers", where they
// reach each other's proxies and the test reaches their APIs, and "db",
// the only way to PostgreSQL. One replica is cut off from the database by
// `docker network disconnect` of its db network: its backend stops before
// its lease expires, another replica's connect then gets a new backend
// that loaded the last save, and the replica, connected again, rejoins
// without its old backend.
func TestReplicas_NetworkPartition(t *testing.T) {
	testbin.NeedDocker(t)
	image, err := testbin.Image(bin.Berth, "berth-replicas-node")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(testbin.RemoveImages)
	storeURL := pgtest.URL(t, "netsplit")
	peers, db := newDockerNet(t, "peers"), newDockerNet(t, "db")
	// PostgreSQL listens on this host's loopback: a relay on the db
	// network's gateway brings it there, and only there. It serves
	// connections from the db network's addresses alone and holds any
	// other silently, as a database on a private network would be
	// unreachable: a container cut off from the db network cannot reach
	// it through its other network.
	relay := newSubnetRelay(t, db.gateway, db.subnet, pgAddr(t, os.Getenv("BERTH_TEST_POSTGRES_URL")))
	u, err := url.Parse(storeURL)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = relay.ln.Addr().String()
	c := &cluster{t: t, store: u.String(), apiKey: "replicas-test-key",
		tokenKey: "replicas-test-token-key-0123456789abcdef", shared: t.TempDir(), runtime: "process"}
	if err := os.Chmod(c.shared, 0o777); err != nil {
		t.Fatal(err)
	}
	c.blobs = "file:/shared/blobs"
	var cs []*containerNode
	for i := range 3 {
		cs = append(cs, startContainerNode(t, c, image, fmt.Sprintf("n%d", i+1), peers, db, i+2))
	}
	for _, cn := range cs {
		cn.waitHealthy(t)
	}
	a, cut := cs[0], cs[2]
	ctx := testCtx(t, 3*time.Minute)

	grace := 5
	notepad := &berth.SpawnConfig{Command: []string{"/berth", "demo-backend"}, GraceSeconds: &grace,
		State: berth.StateConfig{Mode: berth.StateModeBlob}}
	first, err := cut.Client.Connect(ctx, api.ConnectRequest{Key: "pad", Spawn: notepad, Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	if first.State != berth.StateReady {
		t.Fatalf("backend %s is %s (%s), want ready", first.BackendID, first.State, first.Reason)
	}
	if rec, err := a.Client.Backend(ctx, first.BackendID); err != nil || rec.Node != cut.id {
		t.Fatalf("backend %s runs on %v (%v), want %s", first.BackendID, rec, err, cut.id)
	}
	// Written through another container's proxy, which forwards to the
	// cut one's over the peers network.
	edit(t, a.node, first, "written before the partition")
	if len(backendProcs(first.BackendID)) == 0 {
		t.Fatalf("backend %s has no process on this kernel", first.BackendID)
	}

	cutAt := time.Now()
	dockerRun(t, "network", "disconnect", db.name, cut.name)
	eventually(t, leaseTTL, "the cut-off replica's backend to stop", func() bool { return len(backendProcs(first.BackendID)) == 0 })
	stoppedAt := time.Now()
	t.Logf("the backend stopped %s after the disconnect (lease %s)", stoppedAt.Sub(cutAt).Round(time.Millisecond), leaseTTL)
	eventually(t, 5*time.Second, "the cut-off replica to say it is not healthy", func() bool {
		resp, err := http.Get(cut.API + "/healthz")
		if err != nil {
			return false
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable && strings.Contains(string(body), "cut_off")
	})
	if v := cut.metric(t, "berth_lease_held"); v != "0" {
		t.Errorf("berth_lease_held = %q once cut off, want 0", v)
	}
	if held := relay.refused(); held == 0 {
		t.Errorf("the cut-off replica never tried the database through its other network; the test cut nothing")
	}

	moved := awaitMoved(ctx, t, a.Client, "pad", notepad, first)
	nodes, err := a.Client.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.ID == cut.id && !stoppedAt.Before(n.LeaseExpiresAt) {
			t.Errorf("the backend stopped at %s, not before the cut-off node's lease expired at %s", stoppedAt, n.LeaseExpiresAt)
		}
	}
	if moved.FencingToken <= first.FencingToken || moved.State != berth.StateReady {
		t.Errorf("new backend: %s, fencing token %d (old %d); want ready, larger", moved.State, moved.FencingToken, first.FencingToken)
	}
	if got := read(t, a.node, moved); got != "written before the partition" {
		t.Errorf("the new backend loaded %q, want the text saved before the partition", got)
	}

	dockerRun(t, "network", "connect", "--ip", cut.dbIP, db.name, cut.name)
	awaitRejoined(ctx, t, 20*time.Second, cut.API, cut.Client, a.Client, first, moved)
	if pids := backendProcs(first.BackendID); len(pids) > 0 {
		t.Errorf("the old backend runs again after the rejoin: pids %v", pids)
	}
	// The rejoined node serves its peers' backends again, and they its.
	if got := read(t, cut.node, moved); got != "written before the partition" {
		t.Errorf("through the rejoined node's proxy: %q", got)
	}
}

// dockerNet is a bridge network a test made, with a subnet of its choosing.
type dockerNet struct {
	name, subnet, gateway string
	prefix                string // the first three octets: prefix + ".N" is a host
}

// newDockerNet creates a network on a free 10.x.y.0/24, removed when the
// test ends.
func newDockerNet(t *testing.T, role string) *dockerNet {
	t.Helper()
	var lastErr error
	for range 20 {
		prefix := fmt.Sprintf("10.%d.%d", 150+rand.IntN(90), rand.IntN(256))
		n := &dockerNet{name: fmt.Sprintf("berth-test-%s-%08x", role, rand.Uint32()), subnet: prefix + ".0/24",
			gateway: prefix + ".1", prefix: prefix}
		out, err := exec.Command("docker", "network", "create", "--driver", "bridge", "--subnet", n.subnet,
			"--gateway", n.gateway, "--label", "berth.test=replicas", n.name).CombinedOutput()
		if err != nil {
			lastErr = fmt.Errorf("docker network create %s: %v: %s", n.subnet, err, out)
			continue // a subnet another network has: draw again
		}
		t.Cleanup(func() {
			if out, err := exec.Command("docker", "network", "rm", n.name).CombinedOutput(); err != nil {
				t.Errorf("docker network rm %s: %v: %s", n.name, err, out)
			}
		})
		return n
	}
	t.Fatal(lastErr)
	return nil
}

// containerNode is a replica running in a container: node's API, proxy and
// client, at the container's address on the peers network.
type containerNode struct {
	*node
	name string
	dbIP string
}

// startContainerNode runs replica id in a container on both networks, at
// .host on each; the shared dir (blobs, the backends' locks and audit)
// is mounted from this host at /shared.
func startContainerNode(t *testing.T, c *cluster, image, id string, peers, db *dockerNet, host int) *containerNode {
	t.Helper()
	ip := fmt.Sprintf("%s.%d", peers.prefix, host)
	cn := &containerNode{name: fmt.Sprintf("berth-test-%s-%08x", id, rand.Uint32()), dbIP: fmt.Sprintf("%s.%d", db.prefix, host)}
	cn.node = &node{c: c, id: id, API: "http://" + ip + ":7070", Proxy: "http://" + ip + ":7080", proxyAt: ip + ":7080"}
	cn.Client = api2(cn.API, c.apiKey)
	controlAPIs.Lock()
	controlAPIs.m[ip+":7070"] = cn.node
	controlAPIs.Unlock()
	dockerRun(t, "create", "--name", cn.name, "--label", "berth.test=replicas",
		"--network", peers.name, "--ip", ip,
		"--tmpfs", "/data:rw,exec,size=256m", "--tmpfs", "/tmp:rw,size=64m",
		"-v", c.shared+":/shared",
		image, "serve",
		"--api-addr", "0.0.0.0:7070", "--proxy-addr", "0.0.0.0:7080", "--backend-api-addr", "127.0.0.1:7071",
		"--peer-addr", ip+":7080", "--public-url", cn.Proxy,
		"--data-dir", "/data", "--runtime", "process", "--log-level", "debug",
		"--api-key", c.apiKey, "--token-key", c.tokenKey,
		"--store", c.store, "--blobs", c.blobs,
		"--node-id", id, "--lease-ttl", leaseTTL.String())
	t.Cleanup(func() { cn.remove(t) })
	dockerRun(t, "network", "connect", "--ip", cn.dbIP, db.name, cn.name)
	dockerRun(t, "start", cn.name)
	return cn
}

func (cn *containerNode) waitHealthy(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(cn.API + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			out, _ := exec.Command("docker", "logs", "--tail", "60", cn.name).CombinedOutput()
			t.Fatalf("%s did not answer /healthz within 60s\n%s", cn.id, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// remove stops the replica as a rolling restart would (SIGTERM, then its
// exit status must be 0), shows its log if the test failed, and removes
// the container; nothing of its backends may outlive it.
func (cn *containerNode) remove(t *testing.T) {
	if out, err := exec.Command("docker", "stop", "-t", "30", cn.name).CombinedOutput(); err != nil {
		t.Errorf("docker stop %s: %v: %s", cn.name, err, out)
	}
	if out, err := exec.Command("docker", "inspect", "-f", "{{.State.ExitCode}}", cn.name).Output(); err != nil || strings.TrimSpace(string(out)) != "0" {
		t.Errorf("%s exited with status %q (%v) after SIGTERM, want 0", cn.id, strings.TrimSpace(string(out)), err)
	}
	if t.Failed() {
		out, _ := exec.Command("docker", "logs", "--tail", "80", cn.name).CombinedOutput()
		t.Logf("%s output (tail):\n%s", cn.id, out)
	}
	cn.mu.Lock()
	for _, err := range cn.mismatches {
		t.Errorf("%s: an answer the OpenAPI document does not describe: %v", cn.id, err)
	}
	cn.mu.Unlock()
	exec.Command("docker", "rm", "-f", cn.name).Run()
}

func dockerRun(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("docker", args...).CombinedOutput(); err != nil {
		t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// subnetRelay forwards TCP connections from addresses in one subnet to a
// server; a connection from anywhere else is accepted and then never
// answered, so a client that lost the subnet sees its database go silent,
// not refuse.
type subnetRelay struct {
	ln     net.Listener
	subnet *net.IPNet
	target string

	mu    sync.Mutex
	held  int
	conns []net.Conn
}

func newSubnetRelay(t *testing.T, ip, subnet, target string) *subnetRelay {
	t.Helper()
	_, sn, err := net.ParseCIDR(subnet)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	r := &subnetRelay{ln: ln, subnet: sn, target: target}
	go r.serve()
	t.Cleanup(func() {
		ln.Close()
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, c := range r.conns {
			c.Close()
		}
	})
	return r
}

func (r *subnetRelay) serve() {
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.mu.Lock()
		r.conns = append(r.conns, c)
		from, _ := c.RemoteAddr().(*net.TCPAddr)
		inside := from != nil && r.subnet.Contains(from.IP)
		if !inside {
			r.held++
		}
		r.mu.Unlock()
		if !inside {
			continue // held open, never answered
		}
		go r.pipe(c)
	}
}

func (r *subnetRelay) pipe(c net.Conn) {
	s, err := net.Dial("tcp", r.target)
	if err != nil {
		c.Close()
		return
	}
	r.mu.Lock()
	r.conns = append(r.conns, s)
	r.mu.Unlock()
	go func() { io.Copy(s, c); s.Close() }()
	io.Copy(c, s)
	c.Close()
}

// refused is how many connections came from outside the subnet.
func (r *subnetRelay) refused() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.held
}
