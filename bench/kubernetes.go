package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
	berthkube "github.com/berthhq/berth/runtime/kubernetes"
)

func init() {
	scenarios = append(scenarios, &scenario{
		name:    "cold-kubernetes",
		summary: "connect → first HTTP 200, kubernetes runtime on a kwok node, vs a bare client-go Pod create → Running",
		figures: []figureSpec{
			{name: "connect → ready, Kubernetes (kwok), p50", unit: "ms", baseline: "create → Running", target: target{ratioAtMost, 1.2},
				method: "Berth with --runtime kubernetes: POST /v1/connect for a new key (wait=false), then GET the returned URL through the proxy until a 200; then a hard terminate, waited out. Pods go to a kwok node (nothing runs in them; their IPs are loopback addresses, where one bench backend listening on every address answers for all). Baseline: client-go creates the same Pod Berth creates (a copy of one Berth made in this run: its spec, env, resources, security contexts, labels and annotations, under another name and with berth.dev/managed changed so that Berth does not take it for its own) on the same node, and watches it until Running; the note gives a minimal Pod's time too (one container, an image and a node selector: the baseline of the runs before this one was made fair). Alternating, 15 samples each per run (after 2 discarded)"},
		},
		skip: skipNoKube,
		run:  runColdKube,
	})
}

// KubeConfig says where the kubernetes scenario runs: a cluster whose
// NodeSelector matches a kwok node with a loopback podCIDR (berth bench
// --kubeconfig …; .ci/bench starts one with kubetest's kubecluster).
type KubeConfig struct {
	Kubeconfig   string
	Namespace    string
	NodeSelector string // label=value
}

func skipNoKube(ctx context.Context, e *env) string {
	if e.cfg.Kube.Kubeconfig == "" {
		return "no Kubernetes cluster given (--kubeconfig, or BERTH_BENCH_KUBECONFIG)"
	}
	return ""
}

// kubeBench is the scenario's Berth and its cluster client.
type kubeBench struct {
	api      *api.Client
	cs       kubernetes.Interface
	selector map[string]string
	ns       string
}

func (e *env) kubeBench(ctx context.Context) (*kubeBench, error) {
	e.kubeOnce.Do(func() { e.kube, e.kubeErr = e.startKube(ctx) })
	return e.kube, e.kubeErr
}

func (e *env) startKube(ctx context.Context) (*kubeBench, error) {
	kc := e.cfg.Kube
	name, value, ok := strings.Cut(kc.NodeSelector, "=")
	if !ok {
		return nil, fmt.Errorf("kubernetes: node selector %q is not label=value", kc.NodeSelector)
	}
	rc, err := clientcmd.BuildConfigFromFlags("", kc.Kubeconfig)
	if err != nil {
		return nil, err
	}
	rc.QPS, rc.Burst = 100, 200
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	// One backend answers for every kwok Pod: they all listen on port,
	// and their IPs are this host's loopback addresses.
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(e.backend[0], e.backend[1:]...)
	cmd.Env = []string{"PORT=" + strconv.Itoa(port)}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the stand-in backend: %w", err)
	}
	e.kubeBackend = cmd
	key := make([]byte, 16)
	rand.Read(key)
	b, err := e.startServer(ctx, "berth-kube", hex.EncodeToString(key),
		"--runtime", "kubernetes", "--kubeconfig", kc.Kubeconfig, "--kube-namespace", kc.Namespace,
		"--kube-node-selector", kc.NodeSelector, "--kube-backend-port", strconv.Itoa(port))
	if err != nil {
		return nil, err
	}
	e.kubeBerth = b
	e.log("Berth on Kubernetes is up (pid %d; log %s)", b.PID, b.logPath)
	return &kubeBench{api: api.NewClient(b.API, b.apiKey, e.hc), cs: cs, selector: map[string]string{name: value}, ns: kc.Namespace}, nil
}

func (e *env) stopKube() {
	if e.kubeBerth != nil {
		if err := e.kubeBerth.stop(); err != nil {
			e.log("stop Berth on Kubernetes: %v", err)
		}
	}
	if e.kubeBackend != nil {
		syscall.Kill(-e.kubeBackend.Process.Pid, syscall.SIGKILL)
		e.kubeBackend.Wait()
	}
}

func runColdKube(ctx context.Context, e *env, r *runCtx) (*result, error) {
	k, err := e.kubeBench(ctx)
	if err != nil {
		return nil, err
	}
	n, warm := size(&e.cfg, 15, 3), size(&e.cfg, 2, 1)
	grace, idle := 1, 60
	spawn := &berth.SpawnConfig{Image: "berth.bench/kwok:1", GraceSeconds: &grace, MaxIdleSeconds: &idle}
	same, err := k.berthPod(ctx, fmt.Sprintf("kube-%d-template", r.n), spawn)
	if err != nil {
		return nil, err
	}
	minimal := &corev1.Pod{Spec: corev1.PodSpec{NodeSelector: k.selector, Containers: []corev1.Container{{Name: "c", Image: spawn.Image}}}}
	var (
		ph   phases
		mins []time.Duration
	)
	b, x, err := coldPair(ctx, n, warm,
		func(i int) (time.Duration, error) {
			p := &ph
			if i < warm {
				p = nil
			}
			return e.coldVia(ctx, k.api, fmt.Sprintf("kube-%d-%d", r.n, i), spawn, p)
		},
		func(i int) (time.Duration, error) {
			// Both Pods, in turn first: the minimal one for the note.
			var d, dm time.Duration
			var err error
			for j := range 2 {
				if (i+j)%2 == 0 {
					d, err = k.bareRunning(ctx, fmt.Sprintf("bare-%d-%d", r.n, i), same)
				} else {
					dm, err = k.bareRunning(ctx, fmt.Sprintf("bare-min-%d-%d", r.n, i), minimal)
				}
				if err != nil {
					return 0, err
				}
			}
			if i >= warm {
				mins = append(mins, dm)
			}
			return d, nil
		})
	if err != nil {
		return nil, err
	}
	const name = "connect → ready, Kubernetes (kwok), p50"
	res := coldResult(name, b, x, &ph)
	bs, ms := durationsIn(b, time.Millisecond), durationsIn(mins, time.Millisecond)
	res.notes[name] += fmt.Sprintf("; against a minimal Pod's create → Running (%.2f ms at p50): %.2fx", percentile(ms, 50), percentile(bs, 50)/percentile(ms, 50))
	return res, nil
}

// berthPod has Berth start a backend for key and returns a copy of its
// Pod to create as the baseline's: the same spec, labels and annotations,
// with berth.dev/managed set to "bench" (so that no Berth takes it for one
// of its own, or for an orphan to remove) and nothing the API server set.
func (k *kubeBench) berthPod(ctx context.Context, key string, spawn *berth.SpawnConfig) (*corev1.Pod, error) {
	res, err := k.api.Connect(ctx, api.ConnectRequest{Key: key, Spawn: spawn, User: "bench", Wait: true})
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", key, err)
	}
	defer terminateVia(ctx, k.api, res.BackendID)
	list, err := k.cs.CoreV1().Pods(k.ns).List(ctx, metav1.ListOptions{LabelSelector: berthkube.LabelBackend + "=" + res.BackendID})
	if err != nil {
		return nil, err
	}
	if len(list.Items) != 1 {
		return nil, fmt.Errorf("kubernetes: %d Pods labelled %s=%s, want 1", len(list.Items), berthkube.LabelBackend, res.BackendID)
	}
	made := &list.Items[0]
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Labels: made.Labels, Annotations: made.Annotations},
		Spec:       *made.Spec.DeepCopy(),
	}
	pod.Labels[berthkube.LabelManaged] = "bench"
	pod.Spec.NodeName = ""  // bound by the API server's binding, as Berth's was
	pod.Spec.Priority = nil // set by admission, which refuses it from a client
	return pod, nil
}

// bareRunning creates a copy of pod named name, watches it until it runs,
// and deletes it (not timed).
func (k *kubeBench) bareRunning(ctx context.Context, name string, pod *corev1.Pod) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	pods := k.cs.CoreV1().Pods(k.ns)
	w, err := pods.Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + name})
	if err != nil {
		return 0, err
	}
	defer w.Stop()
	start := time.Now()
	pod = pod.DeepCopy()
	pod.Name = name
	_, err = pods.Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return 0, err
	}
	defer func() {
		zero := int64(0)
		pods.Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	}()
	for ev := range w.ResultChan() {
		if pod, ok := ev.Object.(*corev1.Pod); ok && ev.Type != watch.Deleted && pod.Status.Phase == corev1.PodRunning {
			return time.Since(start), nil
		}
	}
	return 0, fmt.Errorf("kubernetes: Pod %s: the watch ended before it ran: %v", name, ctx.Err())
}
