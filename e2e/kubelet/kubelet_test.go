package kubelet

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
	"github.com/berthhq/berth/internal/testbin"
	"github.com/berthhq/berth/runtime/kubernetes"
	"github.com/berthhq/berth/runtime/kubernetes/kubetest"
	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"
)

const howToGet = "run it as root with Docker, Debian's containerd and runc (apt-get install containerd runc containernetworking-plugins), " +
	"and the kubelet built once by `bash .ci/k8s-tools.sh` (or BERTH_K8S_TOOLS pointing at a directory that has it)"

// TestKubelet_backendLifecycle: berth serve --runtime kubernetes runs a
// backend as a Pod that a real kubelet runs in containerd, from a FROM
// scratch image imported locally (pull_policy never); Berth's probe sees it
// ready, its proxy reaches it over the CNI bridge (HTTP, and a WebSocket to
// berth's demo notepad in a second Pod), its output comes through pods/log,
// and a terminate deletes the Pod and records how the container exited.
func TestKubelet_backendLifecycle(t *testing.T) {
	need(t, os.Geteuid() == 0, "a kubelet needs root", howToGet)
	for _, tool := range []string{"containerd", "ctr", "runc", "docker", "ip", "/usr/lib/cni/bridge", "/usr/lib/cni/host-local"} {
		_, err := exec.LookPath(tool)
		need(t, err == nil, tool+" is missing", howToGet)
	}
	tools := kubetest.Tools(t)
	_, err := os.Stat(filepath.Join(tools, "kubelet"))
	need(t, err == nil, "the kubelet is missing from "+tools, howToGet)
	testbin.NeedDocker(t)
	t0 := time.Now()
	step := func(what string) { t.Logf("%5.1fs %s", time.Since(t0).Seconds(), what) }
	t.Cleanup(func() { step("cleaned up") }) // runs last

	step("building berth, testbackend and pause")
	bins := t.TempDir()
	bin, err := testbin.Build(bins)
	if err != nil {
		t.Fatal(err)
	}
	pause := filepath.Join(bins, "pause")
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	build := exec.Command(gobin, "build", "-o", pause, "./internal/pause")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the pause program: %v %s", err, out)
	}
	t.Cleanup(testbin.RemoveImages)
	step("building their FROM scratch images")
	image, err := testbin.Image(bin.TestBackend, "berth.test/kubelet-testbackend")
	if err != nil {
		t.Fatal(err)
	}
	pauseImage, err := testbin.Image(pause, "berth.test/kubelet-pause")
	if err != nil {
		t.Fatal(err)
	}
	// berth itself, for its demo backend's WebSocket.
	berthImage, err := testbin.Image(bin.Berth, "berth.test/kubelet-berth")
	if err != nil {
		t.Fatal(err)
	}

	step("starting etcd and kube-apiserver")
	c, err := kubetest.Start(tools)
	if err != nil {
		t.Fatalf("start etcd and kube-apiserver: %v", err)
	}
	t.Cleanup(c.Stop)
	step("starting containerd (importing the images) and the kubelet")
	n := startNode(t, c, tools, []string{image, berthImage}, pauseImage, filepath.Dir(bins), c.Dir)
	ns := c.Namespace(t)
	bindPods(t, c, ns)

	step("Node ready; starting berth serve")
	s := serve(t, bin.Berth, c, ns)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	spawn := &berth.SpawnConfig{Image: image, PullPolicy: "never", GraceSeconds: new(5), Env: map[string]string{"TB_LOG_LINES": "1"}}
	step("connect")
	cr, err := s.Connect(ctx, api.ConnectRequest{Key: "kubelet", Spawn: spawn, Wait: true, WaitTimeoutSeconds: 60})
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	if cr.State != berth.StateReady {
		t.Fatalf("connect with wait: state %q reason %q, want ready", cr.State, cr.Reason)
	}

	step("backend ready")
	// The Pod, as the API server has it from the kubelet.
	pods := c.Client.CoreV1().Pods(ns)
	list, err := pods.List(ctx, metav1.ListOptions{LabelSelector: kubernetes.LabelBackend + "=" + cr.BackendID})
	if err != nil || len(list.Items) != 1 {
		t.Fatalf("the backend's Pod: %v, %d Pods", err, len(list.Items))
	}
	pod := list.Items[0]
	_, podNet, _ := net.ParseCIDR(subnet)
	if pod.Spec.NodeName != nodeName || pod.Status.Phase != corev1.PodRunning || !podNet.Contains(net.ParseIP(pod.Status.PodIP)) {
		t.Errorf("Pod %s on node %q, phase %s, IP %s; want Running on %s with an IP in %s", pod.Name, pod.Spec.NodeName, pod.Status.Phase, pod.Status.PodIP, nodeName, subnet)
	}
	if len(pod.Status.ContainerStatuses) != 1 || pod.Status.ContainerStatuses[0].State.Running == nil || pod.Status.ContainerStatuses[0].ContainerID == "" ||
		!strings.HasPrefix(pod.Status.ContainerStatuses[0].ContainerID, "containerd://") {
		t.Errorf("container statuses %+v, want one running in containerd", pod.Status.ContainerStatuses)
	}
	if ids := n.ctrLines(t, "containers", "ls", "-q"); len(ids) < 2 {
		t.Errorf("containerd has containers %q, want the sandbox and the backend", ids)
	}

	// Through Berth's proxy, to the testbackend in the Pod, which answers
	// GET / with its environment.
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, cr.URL, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s through the proxy: %v", cr.URL, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET through the proxy: %d %s", resp.StatusCode, body)
	}
	var env map[string]string
	if err := json.Unmarshal(body, &env); err != nil {
		t.Fatalf("the backend's answer %q: %v", body, err)
	}
	if env["BERTH_BACKEND_ID"] != cr.BackendID || env["PORT"] != "8080" || env["HOSTNAME"] != pod.Name {
		t.Errorf("the backend's environment has BERTH_BACKEND_ID %q, PORT %q, HOSTNAME %q; want %s, 8080, %s",
			env["BERTH_BACKEND_ID"], env["PORT"], env["HOSTNAME"], cr.BackendID, pod.Name)
	}

	// Its output, which Berth reads through pods/log: the API server gets
	// it from the kubelet (at the Node's InternalIP), the kubelet from
	// containerd's log file.
	var logs strings.Builder
	for !strings.Contains(logs.String(), "tb stdout 1") {
		logs.Reset()
		if err := s.Logs(ctx, cr.BackendID, false, &logs); err != nil {
			t.Fatalf("the backend's logs: %v", err)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the backend's logs %q, want its start-up line \"tb stdout 1\"", logs.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
	step("logs read")

	// A WebSocket through the proxy to a Pod: berth's own demo backend (the
	// notepad) echoes an edit to every socket.
	step("connect to the notepad")
	np, err := s.Connect(ctx, api.ConnectRequest{Key: "notepad", Wait: true, WaitTimeoutSeconds: 60, Spawn: &berth.SpawnConfig{
		Image: berthImage, Command: []string{"/berth", "demo-backend"}, PullPolicy: "never", GraceSeconds: new(5)}})
	if err != nil || np.State != berth.StateReady {
		t.Fatalf("connect to the notepad: %v (%+v)", err, np)
	}
	wsURL := "ws" + strings.TrimPrefix(np.URL, "http") + "ws"
	conn, _, err := websocket.Dial(ctx, wsURL, nil)
	if err != nil {
		t.Fatalf("WebSocket %s through the proxy: %v", wsURL, err)
	}
	if err := wsjson.Write(ctx, conn, map[string]any{"seq": 1, "text": "written through a kubelet's Pod"}); err != nil {
		t.Fatalf("WebSocket write: %v", err)
	}
	for {
		var m struct{ Text string }
		if err := wsjson.Read(ctx, conn, &m); err != nil {
			t.Fatalf("WebSocket read: %v", err)
		}
		if m.Text == "written through a kubelet's Pod" {
			break
		}
	}
	conn.Close(websocket.StatusNormalClosure, "")
	step("WebSocket round trip done")
	if err := s.Terminate(ctx, np.BackendID, false); err != nil {
		t.Fatalf("terminate the notepad: %v", err)
	}

	// Terminate: the kubelet stops the container (SIGTERM, on which the
	// testbackend exits 0) and the Pod goes.
	step("terminate")
	if err := s.Terminate(ctx, cr.BackendID, false); err != nil {
		t.Fatalf("terminate: %v", err)
	}
	for _, id := range []string{cr.BackendID, np.BackendID} {
		b := waitTerminated(t, ctx, s, id)
		if b.Reason != berth.ReasonRequested || b.ExitCode == nil || *b.ExitCode != 0 {
			t.Errorf("terminated backend %s: reason %q, exit code %v; want requested, 0", id, b.Reason, fmtCode(b.ExitCode))
		}
	}
	step("backends terminated")
	for {
		list, err := pods.List(ctx, metav1.ListOptions{})
		if err == nil && len(list.Items) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("Pods are still there after their backends terminated: %v %v", err, list)
		case <-time.After(100 * time.Millisecond):
		}
	}
	step("Pods deleted")
	// The kubelet removes the backend's container from containerd; the
	// sandbox, stopped, stays until the kubelet's garbage collection.
	deadline := time.Now().Add(30 * time.Second)
	for {
		tasks := n.ctrLines(t, "tasks", "ls", "-q")
		if len(tasks) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("containerd still runs tasks %q 30s after the Pod went", tasks)
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	step("no task left in containerd; cleaning up")
}

func waitTerminated(t *testing.T, ctx context.Context, s *api.Client, id string) *berth.Backend {
	t.Helper()
	for {
		b, err := s.Backend(ctx, id)
		if err != nil {
			t.Fatalf("GET backend %s: %v", id, err)
		}
		if b.State == berth.StateTerminated {
			return b
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the backend %s is %s after 2 minutes, want terminated", id, b.State)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func fmtCode(c *int) any {
	if c == nil {
		return "none"
	}
	return *c
}

// serve starts `berth serve --runtime kubernetes` against c, with its Pods
// in ns on the kubelet's Node, and stops it with SIGINT (exit status 0
// wanted) at the end.
func serve(t *testing.T, berthBin string, c *kubetest.Cluster, ns string) *api.Client {
	t.Helper()
	apiAddr, proxyAddr, backendAddr := testbin.FreeAddr(t), testbin.FreeAddr(t), testbin.FreeAddr(t)
	const key = "e2e-kubelet-key"
	dir := t.TempDir()
	cmd := exec.Command(berthBin, "serve",
		"--api-addr", apiAddr,
		"--proxy-addr", proxyAddr,
		"--backend-api-addr", backendAddr,
		"--data-dir", dir,
		"--api-key", key,
		"--log-level", "debug",
		"--runtime", kubernetes.Name,
		"--kubeconfig", c.Kubeconfig,
		"--kube-namespace", ns,
		"--kube-node-selector", nodeLabel)
	cmd.Dir = dir
	cmd.Env = testbin.CleanEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // a killed test leaves no berth
	out := &testbin.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start berth: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("berth exited with %v after SIGINT, want status 0", err)
			}
		case <-time.After(60 * time.Second):
			t.Errorf("berth did not exit in 60s after SIGINT; killing it")
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("berth output (tail):\n%s", tail(out.String(), 80))
		}
	})
	client := api.NewClient("http://"+apiAddr, key, nil)
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		err := client.Health(ctx)
		cancel()
		if err == nil {
			return client
		}
		var ae *api.Error
		if time.Now().After(deadline) || errors.As(err, &ae) {
			t.Fatalf("berth serve is not healthy: %v\n%s", err, tail(out.String(), 40))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func tail(s string, lines int) string {
	ls := strings.Split(s, "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}
