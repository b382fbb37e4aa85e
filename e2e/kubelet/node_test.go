package kubelet

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/berthhq/berth/internal/testbin"
	"github.com/berthhq/berth/runtime/kubernetes/kubetest"
)

const (
	// nodeName is the kubelet's Node.
	nodeName = "berth-kubelet-e2e"
	// nodeLabel is on the Node (--node-labels) and in Berth's
	// --kube-node-selector.
	nodeLabel = "berth.test/kubelet=real"
	// bridge and subnet are the CNI network; the lock makes them this
	// test's alone.
	bridge = "berthkl0"
	subnet = "10.88.79.0/24"
	// nodeIface and nodeAddr are the Node's own address: an interface the
	// test makes (a veth pair: this kernel may lack the dummy type), so that the kubelet (which refuses a loopback
	// --node-ip) listens on an address of this test's and never on the
	// machine's own network.
	nodeIface = "berthkl1"
	nodeAddr  = "10.88.78.1"
	// lockFile serialises runs on one machine: two kubelets would share the
	// kubepods cgroups and /var/lib/kubelet/device-plugins/kubelet.sock.
	lockFile = "/run/berth-e2e-kubelet.lock"
)

// kubeletSysctls are what a kubelet with protectKernelDefaults false sets
// (and the neighbours it checks): saved before, restored after.
var kubeletSysctls = []string{
	"vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops",
	"kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes",
}

// hostPaths are the paths the kubelet and go-cni write outside the
// directories they are given; the cleanup removes those it created.
var hostPaths = []string{"/var/lib/kubelet", "/var/lib/cni", "/var/log/containers"}

// need fails the test under CI=true and skips it elsewhere, with how to
// get what is missing.
func need(t *testing.T, ok bool, what, how string) {
	t.Helper()
	if ok {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s; CI must have it: %s", what, how)
	}
	t.Skipf("%s; %s", what, how)
}

// node is one running containerd + kubelet, registered as nodeName in c.
type node struct {
	dir        string // everything of ours: containerd's root/state/socket, the kubelet's root, CNI's config and IPAM
	sock       string // containerd's
	ip         net.IP // the Node's InternalIP
	kubeletLog string
	ctrdLog    string
}

// startNode prepares the host and starts containerd and the kubelet, with
// images imported; its cleanups undo everything, in reverse order. also
// are directories of the test's that the next run removes if this one is
// killed.
func startNode(t *testing.T, c *kubetest.Cluster, tools string, images []string, pauseImage string, also ...string) *node {
	t.Helper()
	lock(t)
	if j, err := readJournal(); err == nil {
		t.Logf("%s is there: a run was killed before its cleanup; undoing what it changed on the host", journalFile)
		undo(t, j, true)
	} else if !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	for _, p := range []string{"/sys/fs/cgroup/memory/kubepods", "/sys/fs/cgroup/cpu/kubepods"} {
		if _, err := os.Stat(p); err == nil {
			t.Fatalf("%s exists before the test: another kubelet runs on this machine, or one left it behind (remove it with rmdir, deepest first)", p)
		}
	}
	if _, err := net.InterfaceByName(bridge); err == nil {
		t.Fatalf("the bridge %s exists before the test (left behind? ip link del %s)", bridge, bridge)
	}

	if _, err := net.InterfaceByName(nodeIface); err == nil {
		t.Fatalf("the interface %s exists before the test (left behind? ip link del %s)", nodeIface, nodeIface)
	}
	dir, err := os.MkdirTemp("", "berth-kubelet-")
	if err != nil {
		t.Fatal(err)
	}
	j := &journal{Dir: dir, Sysctls: map[string]string{}, Also: also}
	for _, k := range kubeletSysctls {
		b, err := os.ReadFile(sysctlPath(k))
		if err != nil {
			t.Fatalf("read sysctl %s: %v", k, err)
		}
		j.Sysctls[k] = strings.TrimSpace(string(b))
	}
	for _, p := range hostPaths {
		if _, err := os.Lstat(p); errors.Is(err, os.ErrNotExist) {
			j.Created = append(j.Created, p)
		}
	}
	if err := j.write(); err != nil {
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	ip := makeNodeIface(t) // after the journal, so a killed run's successor removes it
	n := &node{dir: dir, sock: filepath.Join(dir, "containerd", "containerd.sock"), ip: ip}
	t.Cleanup(func() {
		// Registered first, so it runs after the processes are gone.
		if t.Failed() || os.Getenv("BERTH_KUBETEST_KEEP") != "" {
			t.Logf("kubelet log (tail):\n%s", tailFile(n.kubeletLog, 60))
			t.Logf("containerd log (tail):\n%s", tailFile(n.ctrdLog, 20))
		}
		undo(t, j, false)
	})
	for _, d := range []string{"containerd/root", "containerd/state", "containerd/opt", "cni/net.d", "cni/ipam", "kubelet/root", "kubelet/logs", "kubelet/plugins", "pki"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}

	// The CNI network: a bridge with no uplink and no masquerading; the
	// host reaches Pods through it (isGateway), which is all Berth's probe
	// and proxy need.
	conflist := fmt.Sprintf(`{"cniVersion": "0.4.0", "name": "berth-e2e", "plugins": [{"type": "bridge", "bridge": %q,
  "isGateway": true, "ipMasq": false, "hairpinMode": true,
  "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": %q}]], "routes": [{"dst": %q}]}}]}
`, bridge, filepath.Join(dir, "cni/ipam"), subnet, subnet)
	write(t, filepath.Join(dir, "cni/net.d/10-berth-e2e.conflist"), conflist)

	n.startContainerd(t, pauseImage)
	for _, img := range append(slices.Clone(images), pauseImage) {
		n.importImage(t, img)
	}
	n.startKubelet(t, c, tools)
	return n
}

// startContainerd runs Debian's containerd with everything under n.dir.
// restrict_oom_score_adj: this machine's root lacks CAP_SYS_RESOURCE, so
// runc cannot give a sandbox the oom_score_adj -998 the CRI asks for; the
// option clamps it to containerd's own.
func (n *node) startContainerd(t *testing.T, pauseImage string) {
	t.Helper()
	d := filepath.Join(n.dir, "containerd")
	cfg := fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
[grpc]
  address = %[3]q
[ttrpc]
  address = %[4]q
[debug]
  address = %[5]q
[metrics]
  address = ""
[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = %[6]q
    enable_cdi = false
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = %[7]q
  [plugins."io.containerd.internal.v1.opt"]
    path = %[8]q
`, filepath.Join(d, "root"), filepath.Join(d, "state"), n.sock, n.sock+".ttrpc", filepath.Join(d, "debug.sock"),
		pauseImage, filepath.Join(n.dir, "cni/net.d"), filepath.Join(d, "opt"))
	write(t, filepath.Join(d, "config.toml"), cfg)
	n.ctrdLog = filepath.Join(d, "containerd.log")
	cmd := exec.Command("containerd", "--config", filepath.Join(d, "config.toml"))
	proc := startProc(t, cmd, n.ctrdLog)
	t.Cleanup(func() {
		// What the kubelet left (it was stopped after Berth deleted its
		// Pods, so normally nothing), then containerd, then its shims.
		for _, id := range n.ctrLines(t, "tasks", "ls", "-q") {
			n.ctr(t, "tasks", "kill", "-s", "SIGKILL", id)
			time.Sleep(200 * time.Millisecond)
			n.ctr(t, "tasks", "delete", "-f", id)
		}
		for _, id := range n.ctrLines(t, "containers", "ls", "-q") {
			n.ctr(t, "containers", "rm", id)
		}
		proc.stop(t)
		killShims(t, n.sock)
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if err := exec.Command("ctr", "-a", n.sock, "version").Run(); err == nil {
			return
		}
		if proc.exited() || time.Now().After(deadline) {
			t.Fatalf("containerd did not answer on %s:\n%s", n.sock, tailFile(n.ctrdLog, 30))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// importImage puts a Docker image into containerd's k8s.io namespace, where
// the CRI finds it, as `docker save | ctr import` would.
func (n *node) importImage(t *testing.T, name string) {
	t.Helper()
	tar := filepath.Join(n.dir, strings.NewReplacer("/", "_", ":", "_").Replace(name)+".tar")
	if out, err := exec.Command("docker", "save", "-o", tar, name).CombinedOutput(); err != nil {
		t.Fatalf("docker save %s: %v %s", name, err, out)
	}
	if out, err := exec.Command("ctr", "-a", n.sock, "-n", "k8s.io", "images", "import", tar).CombinedOutput(); err != nil {
		t.Fatalf("ctr images import %s: %v %s", name, err, out)
	}
	os.Remove(tar)
}

// startKubelet runs the kubelet and waits until its Node is Ready.
//
// failCgroupV1 false: kubelet 1.37 refuses a cgroup v1 host by default, and
// this one is. protectKernelDefaults false: with true it refuses to start
// because this host's kernel.panic, kernel.panic_on_oops and
// vm.overcommit_memory differ from its defaults; with false it sets them,
// and the cleanup puts them back.
func (n *node) startKubelet(t *testing.T, c *kubetest.Cluster, tools string) {
	t.Helper()
	d := filepath.Join(n.dir, "kubelet")
	certFile, keyFile, err := c.KubeletServingCert(filepath.Join(n.dir, "pki"), n.ip)
	if err != nil {
		t.Fatal(err)
	}
	port, healthz := freePort(t), freePort(t)
	// The API server calls the kubelet (pods/log, which Berth reads) at the
	// Node's InternalIP, with no client certificate: anonymous, allowed.
	cfg := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %s
port: %d
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: %d
tlsCertFile: %s
tlsPrivateKeyFile: %s
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization:
  mode: AlwaysAllow
containerRuntimeEndpoint: unix://%s
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
protectKernelDefaults: false
podLogsDir: %s
resolvConf: /etc/resolv.conf
makeIPTablesUtilChains: false
registerNode: true
evictionHard: {memory.available: "100Mi", nodefs.available: "1%%", imagefs.available: "1%%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
`, n.ip, port, healthz, certFile, keyFile, n.sock, filepath.Join(d, "logs"))
	write(t, filepath.Join(d, "config.yaml"), cfg)
	n.kubeletLog = filepath.Join(d, "kubelet.log")
	cmd := exec.Command(filepath.Join(tools, "kubelet"),
		"--config", filepath.Join(d, "config.yaml"),
		"--kubeconfig", c.Kubeconfig,
		"--root-dir", filepath.Join(d, "root"),
		"--volume-plugin-dir", filepath.Join(d, "plugins"),
		"--hostname-override", nodeName,
		"--node-ip", n.ip.String(),
		"--node-labels", nodeLabel,
		"--v", "1")
	proc := startProc(t, cmd, n.kubeletLog)
	t.Cleanup(func() { proc.stop(t) }) // its Node object goes with the cluster

	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	for {
		nd, err := c.Client.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
		if err == nil {
			for _, cond := range nd.Status.Conditions {
				if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
					return
				}
			}
		}
		if proc.exited() {
			t.Fatalf("the kubelet exited:\n%s", tailFile(n.kubeletLog, 40))
		}
		select {
		case <-ctx.Done():
			t.Fatalf("Node %s not Ready in 60s (%v):\n%s", nodeName, err, tailFile(n.kubeletLog, 40))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func (n *node) ctr(t *testing.T, args ...string) {
	t.Helper()
	full := append([]string{"-a", n.sock, "-n", "k8s.io"}, args...)
	if out, err := exec.Command("ctr", full...).CombinedOutput(); err != nil {
		t.Logf("ctr %s: %v %s", strings.Join(args, " "), err, out)
	}
}

func (n *node) ctrLines(t *testing.T, args ...string) []string {
	t.Helper()
	full := append([]string{"-a", n.sock, "-n", "k8s.io"}, args...)
	out, err := exec.Command("ctr", full...).Output()
	if err != nil {
		return nil
	}
	return strings.Fields(string(out))
}

// bindPods plays kube-scheduler's one part the test needs: it binds every
// unscheduled Pod in ns to the Node, until the test ends.
func bindPods(t *testing.T, c *kubetest.Cluster, ns string) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	wg.Go(func() {
		for ctx.Err() == nil {
			list, err := c.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName="})
			if err == nil {
				for _, p := range list.Items {
					if p.DeletionTimestamp != nil {
						continue
					}
					// An error (the Pod was bound or deleted meanwhile)
					// is settled by the next round.
					c.Client.CoreV1().Pods(ns).Bind(ctx, &corev1.Binding{
						ObjectMeta: metav1.ObjectMeta{Name: p.Name, UID: p.UID},
						Target:     corev1.ObjectReference{Kind: "Node", Name: nodeName},
					}, metav1.CreateOptions{})
				}
			}
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	})
}

// proc is a process the test started, in its own process group, killed
// with the test binary (Pdeathsig).
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func startProc(t *testing.T, cmd *exec.Cmd, logFile string) *proc {
	t.Helper()
	f, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start %s: %v", cmd.Path, err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); f.Close(); close(p.done) }()
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process group, and SIGKILL after 10s.
func (p *proc) stop(t *testing.T) {
	pgid := p.cmd.Process.Pid
	syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Logf("%s did not stop on SIGTERM in 10s; SIGKILL", filepath.Base(p.cmd.Path))
		syscall.Kill(-pgid, syscall.SIGKILL)
		<-p.done
	}
}

// killShims kills the containerd-shim processes of our containerd (they
// outlive it by design), found by the socket they were given.
func killShims(t *testing.T, sock string) {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(cmdline), "\x00")
		if strings.HasPrefix(filepath.Base(args[0]), "containerd-shim") && slices.Contains(args, sock) {
			t.Logf("killing containerd-shim %d left by the test's containerd", pid)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// lock takes the machine-wide lock for the test's duration.
func lock(t *testing.T) {
	t.Helper()
	f, err := os.OpenFile(lockFile, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Logf("waiting for %s: another run of this test holds it", lockFile)
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { f.Close() })
}

func sysctlPath(k string) string {
	return filepath.Join("/proc/sys", strings.ReplaceAll(k, ".", "/"))
}

// journal is what a run is about to change on the host, written before it
// changes it, so that the next run undoes what a killed one left (a test
// binary killed by a timeout runs no cleanup; Pdeathsig stops only the
// processes it started).
type journal struct {
	Dir     string            `json:"dir"`     // the run's files
	Sysctls map[string]string `json:"sysctls"` // the values before
	Created []string          `json:"created"` // hostPaths that did not exist
	// Also are the test's other directories (its binaries, the
	// cluster's files), which only a killed run leaves.
	Also []string `json:"also"`
}

const journalFile = "/run/berth-e2e-kubelet.json"

func readJournal() (*journal, error) {
	b, err := os.ReadFile(journalFile)
	if err != nil {
		return nil, err
	}
	var j journal
	if err := json.Unmarshal(b, &j); err != nil || j.Dir == "" {
		return nil, fmt.Errorf("%s: %v (remove it once the host is clean)", journalFile, err)
	}
	return &j, nil
}

func (j *journal) write() error {
	b, err := json.Marshal(j)
	if err != nil {
		return err
	}
	return os.WriteFile(journalFile, b, 0o600)
}

// undo puts the host back as the journal found it: after a run's own
// processes stopped (its cleanups), or, for a killed run (orphans), after
// killing what it left running: shims and containers.
func undo(t *testing.T, j *journal, orphans bool) {
	t.Helper()
	if orphans {
		killLeftovers(t, j.Dir)
		for _, d := range j.Also {
			unmountUnder(t, d)
			os.RemoveAll(d)
		}
	}
	for _, ifc := range []string{bridge, nodeIface} {
		if _, err := net.InterfaceByName(ifc); err == nil {
			if out, err := exec.Command("ip", "link", "del", ifc).CombinedOutput(); err != nil {
				t.Errorf("ip link del %s: %v %s", ifc, err, out)
			}
		}
	}
	removeCgroups(t)
	unmountUnder(t, j.Dir)
	if os.Getenv("BERTH_KUBETEST_KEEP") != "" && !orphans {
		t.Logf("the node's files are kept in %s", j.Dir)
	} else if err := os.RemoveAll(j.Dir); err != nil {
		t.Errorf("remove the node's files: %v", err)
	}
	for _, p := range j.Created {
		if err := os.RemoveAll(p); err != nil {
			t.Errorf("remove %s: %v", p, err)
		}
	}
	for _, k := range kubeletSysctls {
		want, ok := j.Sysctls[k]
		if !ok {
			continue
		}
		p := sysctlPath(k)
		if b, _ := os.ReadFile(p); strings.TrimSpace(string(b)) == want {
			continue
		}
		if err := os.WriteFile(p, []byte(want), 0o644); err != nil {
			t.Errorf("restore sysctl %s=%s: %v", k, want, err)
		}
	}
	if err := os.Remove(journalFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Errorf("remove %s: %v", journalFile, err)
	}
}

// killLeftovers SIGKILLs, by pid, what a killed run left running: any
// process whose command line names its directory (containerd's shims, and
// the kubelet or containerd should their death signal have missed), and
// the processes in the kubepods cgroups (its Pods' containers), provided
// no kubelet runs on the machine (the lock says it is not one of ours).
func killLeftovers(t *testing.T, dir string) {
	t.Helper()
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if strings.Contains(string(cmdline), dir) {
			t.Logf("killing %d, left by the killed run: %s", pid, strings.ReplaceAll(string(cmdline), "\x00", " "))
			syscall.Kill(pid, syscall.SIGKILL)
		} else if exe, _ := os.Readlink(filepath.Join("/proc", e.Name(), "exe")); filepath.Base(exe) == "kubelet" {
			t.Fatalf("a kubelet runs (pid %d, %s): the kubepods cgroups may be its own, so the test leaves them; stop it first", pid, exe)
		}
	}
	roots, _ := filepath.Glob("/sys/fs/cgroup/*/kubepods")
	var procs []string
	for _, root := range roots {
		filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.Name() == "cgroup.procs" {
				procs = append(procs, p)
			}
			return nil
		})
	}
	var pids []int
	for _, f := range procs {
		b, _ := os.ReadFile(f)
		for _, l := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(l); err == nil && !slices.Contains(pids, pid) {
				pids = append(pids, pid)
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	if len(pids) > 0 {
		t.Logf("killed %v, left in the kubepods cgroups", pids)
	}
	time.Sleep(500 * time.Millisecond) // for the cgroups to empty
}

// removeCgroups removes the kubepods trees the kubelet made in every
// cgroup hierarchy (it never removes them itself), deepest first.
func removeCgroups(t *testing.T) {
	roots, _ := filepath.Glob("/sys/fs/cgroup/*/kubepods")
	if p := "/sys/fs/cgroup/kubepods"; exists(p) {
		roots = append(roots, p)
	}
	for _, root := range roots {
		var dirs []string
		filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		sort.Sort(sort.Reverse(sort.StringSlice(dirs)))
		for _, d := range dirs {
			var err error
			for range 20 { // a cgroup empties a moment after its last process exits
				if err = syscall.Rmdir(d); err == nil || errors.Is(err, os.ErrNotExist) {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				t.Errorf("rmdir %s: %v", d, err)
			}
		}
	}
}

// unmountUnder unmounts everything mounted at or below dir, deepest first
// (the kubelet bind-mounts its root dir onto itself; the CRI mounts each
// sandbox's shm and netns there).
func unmountUnder(t *testing.T, dir string) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Error(err)
		return
	}
	defer f.Close()
	var points []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && (fields[4] == dir || strings.HasPrefix(fields[4], dir+"/")) {
			points = append(points, fields[4])
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(points)))
	for _, p := range points {
		if err := syscall.Unmount(p, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
			t.Errorf("unmount %s: %v", p, err)
		}
	}
}

// makeNodeIface makes the interface (one end of a veth pair with nothing
// at the other) that carries the Node's
// InternalIP (nodeAddr), where the kubelet listens and the API server
// calls it; the journal's undo deletes it.
func makeNodeIface(t *testing.T) net.IP {
	t.Helper()
	for _, args := range [][]string{
		{"link", "add", nodeIface, "type", "veth", "peer", "name", nodeIface + "p"},
		{"addr", "add", nodeAddr + "/32", "dev", nodeIface},
		{"link", "set", nodeIface + "p", "up"},
		{"link", "set", nodeIface, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v %s", strings.Join(args, " "), err, out)
		}
	}
	return net.ParseIP(nodeAddr).To4()
}

func freePort(t *testing.T) int {
	t.Helper()
	_, p, err := net.SplitHostPort(testbin.FreeAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(p)
	return n
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func tailFile(path string, lines int) string {
	if path == "" {
		return ""
	}
	b, _ := os.ReadFile(path)
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}
