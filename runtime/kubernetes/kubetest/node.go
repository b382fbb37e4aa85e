package kubetest

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"
)

// StopSignalAnnotation is where the node looks for the signal to stop a
// Pod's container with, before lifecycle.stopSignal and SIGTERM. The
// kubernetes runtime writes it; see that package's doc for what a real
// kubelet does instead.
const StopSignalAnnotation = "berth.dev/stop-signal"

// Node plays the kubelet for one Node object: it binds the unscheduled Pods
// whose nodeSelector its labels satisfy (no scheduler runs here), runs each
// Pod's first container as a local process — the binary Images maps its
// image to, with the container's env — reports the Pod's status as a
// kubelet does (Running with a podIP, then terminated with the exit code,
// OOMKilled, Evicted), honours graceful deletion (the stop signal, the
// grace period, SIGKILL, then the final delete) and serves
// /containerLogs/ to the API server, so `pods/log` works. Init containers
// run first, in order, as a kubelet runs them: each to its end (one that
// fails fails the Pod), except sidecars (restartPolicy Always), which are
// started and left running, then stopped after the main container ended
// (SIGTERM, SIGKILL after the Pod's grace period) before the Pod's final
// status is written.
//
// Pods share the host's network: their podIP is 127.0.0.1, so each must
// listen on a port of its own. A volume from a PersistentVolumeClaim is a
// directory per claim under the cluster's files, an emptyDir one per Pod;
// an env value that starts with the volume's mountPath names that
// directory instead (there is no mount namespace).
type Node struct {
	Name   string
	Labels map[string]string

	c      *Cluster
	images map[string]string
	srv    *http.Server
	port   int

	mu   sync.Mutex
	pods map[types.UID]*proc

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type proc struct {
	ns, name string
	uid      types.UID
	logs     *logBuf
	initLogs map[string]*logBuf // init containers' and sidecars' output, by name
	cmd      *exec.Cmd
	exited   chan struct{}
	stopping bool
	reason   string // OOMKilled, Evicted: why the node killed it
	done     bool   // its final status is written
}

// NewNode registers a Node named name with labels and starts serving it
// until Close. images maps image references to local binaries; a Pod whose
// image is not there fails to pull.
func (c *Cluster) NewNode(name string, nodeLabels, images map[string]string) (*Node, error) {
	n := &Node{Name: name, Labels: nodeLabels, c: c, images: images, pods: map[types.UID]*proc{}}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	cert, err := c.servingCert()
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	n.port = ln.Addr().(*net.TCPAddr).Port
	n.srv = &http.Server{Handler: http.HandlerFunc(n.serveLogs), TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}}
	go n.srv.ServeTLS(ln, "", "")
	if err := n.register(); err != nil {
		n.srv.Close()
		return nil, fmt.Errorf("register node %s: %w", name, err)
	}

	factory := informers.NewSharedInformerFactory(c.Client, 0)
	inf := factory.Core().V1().Pods().Informer()
	inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { n.sync(o.(*corev1.Pod)) },
		UpdateFunc: func(_, o any) { n.sync(o.(*corev1.Pod)) },
	})
	factory.Start(n.ctx.Done())
	factory.WaitForCacheSync(n.ctx.Done())
	return n, nil
}

func (n *Node) register() error {
	ctx := n.ctx
	node, err := n.c.Client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: n.Labels}}, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	qty := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("32"),
		corev1.ResourceMemory: resource.MustParse("64Gi"),
		corev1.ResourcePods:   resource.MustParse("500"),
	}
	now := metav1.Now()
	node.Status = corev1.NodeStatus{
		Capacity:        qty,
		Allocatable:     qty,
		Addresses:       []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "127.0.0.1"}, {Type: corev1.NodeHostName, Address: n.Name}},
		DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: int32(n.port)}},
		Conditions:      []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", LastHeartbeatTime: now, LastTransitionTime: now}},
		NodeInfo:        corev1.NodeSystemInfo{KubeletVersion: "kubetest", OperatingSystem: "linux", Architecture: "amd64"},
	}
	_, err = n.c.Client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
	return err
}

// Close kills what the node runs and removes the Node object.
func (n *Node) Close() {
	n.cancel()
	n.mu.Lock()
	for _, p := range n.pods {
		if p.cmd != nil && p.cmd.Process != nil {
			syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		}
	}
	n.mu.Unlock()
	n.wg.Wait()
	n.srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n.c.Client.CoreV1().Nodes().Delete(ctx, n.Name, metav1.DeleteOptions{})
}

func (n *Node) sync(pod *corev1.Pod) {
	if n.ctx.Err() != nil {
		return
	}
	if pod.Spec.NodeName == "" {
		if pod.DeletionTimestamp == nil && labels.SelectorFromSet(pod.Spec.NodeSelector).Matches(labels.Set(n.Labels)) && len(pod.Spec.NodeSelector) > 0 {
			n.bind(pod)
		}
		return
	}
	if pod.Spec.NodeName != n.Name {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	p := n.pods[pod.UID]
	switch {
	case pod.DeletionTimestamp != nil:
		if p == nil || p.done {
			n.finalDelete(pod.Namespace, pod.Name, pod.UID)
			return
		}
		if !p.stopping && p.cmd != nil {
			p.stopping = true
			grace := time.Duration(0)
			if pod.DeletionGracePeriodSeconds != nil {
				grace = time.Duration(*pod.DeletionGracePeriodSeconds) * time.Second
			}
			n.wg.Add(1)
			go n.kill(p, stopSignal(pod), grace)
		}
	case p == nil && pod.Status.Phase != corev1.PodSucceeded && pod.Status.Phase != corev1.PodFailed:
		p = &proc{ns: pod.Namespace, name: pod.Name, uid: pod.UID, logs: newLogBuf(), initLogs: map[string]*logBuf{}, exited: make(chan struct{})}
		n.pods[pod.UID] = p
		n.wg.Add(1)
		go n.run(p, pod.DeepCopy())
	}
}

func (n *Node) bind(pod *corev1.Pod) {
	err := n.c.Client.CoreV1().Pods(pod.Namespace).Bind(n.ctx, &corev1.Binding{
		ObjectMeta: metav1.ObjectMeta{Name: pod.Name, UID: pod.UID},
		Target:     corev1.ObjectReference{Kind: "Node", Name: n.Name},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
		fmt.Fprintf(os.Stderr, "kubetest: bind %s/%s: %v\n", pod.Namespace, pod.Name, err)
	}
}

// finalDelete removes a Pod whose containers are gone, as the kubelet does
// once graceful deletion is done.
func (n *Node) finalDelete(ns, name string, uid types.UID) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		zero := int64(0)
		err := n.c.Client.CoreV1().Pods(ns).Delete(n.ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &uid}})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) && n.ctx.Err() == nil {
			fmt.Fprintf(os.Stderr, "kubetest: delete %s/%s: %v\n", ns, name, err)
		}
		n.mu.Lock()
		delete(n.pods, uid)
		n.mu.Unlock()
	}()
}

func stopSignal(pod *corev1.Pod) syscall.Signal {
	name := pod.Annotations[StopSignalAnnotation]
	if lc := pod.Spec.Containers[0].Lifecycle; name == "" && lc != nil && lc.StopSignal != nil {
		name = string(*lc.StopSignal)
	}
	if s, ok := signals[strings.TrimPrefix(name, "SIG")]; ok {
		return s
	}
	return syscall.SIGTERM
}

var signals = map[string]syscall.Signal{
	"TERM": syscall.SIGTERM, "INT": syscall.SIGINT, "QUIT": syscall.SIGQUIT, "HUP": syscall.SIGHUP,
	"KILL": syscall.SIGKILL, "USR1": syscall.SIGUSR1, "USR2": syscall.SIGUSR2,
}

func (n *Node) kill(p *proc, sig syscall.Signal, grace time.Duration) {
	defer n.wg.Done()
	pid := p.cmd.Process.Pid
	syscall.Kill(-pid, sig)
	select {
	case <-p.exited:
		return
	case <-time.After(grace):
	case <-n.ctx.Done():
	}
	syscall.Kill(-pid, syscall.SIGKILL)
}

// run starts the Pod's container and reports its life in the Pod's status.
func (n *Node) run(p *proc, pod *corev1.Pod) {
	defer n.wg.Done()
	ctr := pod.Spec.Containers[0]
	if _, ok := n.images[ctr.Image]; !ok {
		reason, msg := "ErrImagePull", fmt.Sprintf("failed to pull and unpack image %q: failed to resolve reference %q: not found", ctr.Image, ctr.Image)
		if ctr.ImagePullPolicy == corev1.PullNever {
			reason, msg = "ErrImageNeverPull", fmt.Sprintf("Container image %q is not present with pull policy of Never", ctr.Image)
		}
		n.status(p, func(s *corev1.PodStatus) {
			s.Phase = corev1.PodPending
			s.ContainerStatuses = []corev1.ContainerStatus{{Name: ctr.Name, Image: ctr.Image, State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: msg}}}}
		})
		n.mu.Lock()
		p.done = true
		n.mu.Unlock()
		close(p.exited)
		return
	}
	// Init containers run first, in order, each to its end; one with
	// restartPolicy Always is a sidecar, started and left running beside
	// the main container, stopped after it.
	var sidecars []*exec.Cmd
	var initStatus []corev1.ContainerStatus
	stopSidecars := func(grace time.Duration) {
		for i := len(sidecars) - 1; i >= 0; i-- {
			stopProcess(sidecars[i], grace)
		}
		for i, c := range pod.Spec.InitContainers {
			if i < len(initStatus) && c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
				initStatus[i].State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{Reason: "Completed", FinishedAt: metav1.Now()}}
			}
		}
	}
	for _, ic := range pod.Spec.InitContainers {
		logs := newLogBuf()
		n.mu.Lock()
		p.initLogs[ic.Name] = logs
		n.mu.Unlock()
		cmd, err := n.command(pod, ic, logs)
		if err != nil {
			n.finishInit(p, pod, initStatus, ic, 128, "StartError", err.Error())
			stopSidecars(0)
			return
		}
		if ic.RestartPolicy != nil && *ic.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			if err := cmd.Start(); err != nil {
				n.finishInit(p, pod, initStatus, ic, 128, "StartError", err.Error())
				stopSidecars(0)
				return
			}
			sidecars = append(sidecars, cmd)
			initStatus = append(initStatus, corev1.ContainerStatus{Name: ic.Name, Image: ic.Image, Ready: true, Started: new(true),
				State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.Now()}}})
			continue
		}
		err = cmd.Run()
		code := exitCode(err)
		if err != nil && code == 0 {
			code = 128
		}
		if code != 0 {
			n.finishInit(p, pod, initStatus, ic, code, "Error", string(logs.tail()))
			stopSidecars(0)
			return
		}
		initStatus = append(initStatus, corev1.ContainerStatus{Name: ic.Name, Image: ic.Image,
			State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{Reason: "Completed", FinishedAt: metav1.Now()}}})
	}
	cmd, err := n.command(pod, ctr, p.logs)
	if err == nil {
		n.mu.Lock()
		err = cmd.Start()
		if err == nil {
			p.cmd = cmd
		}
		n.mu.Unlock()
	}
	if err != nil {
		stopSidecars(0)
		n.finish(p, ctr, 128, "StartError", err.Error(), time.Now(), initStatus)
		return
	}
	started := metav1.Now()
	n.status(p, func(s *corev1.PodStatus) {
		s.Phase = corev1.PodRunning
		s.HostIP, s.PodIP = "127.0.0.1", "127.0.0.1"
		s.HostIPs, s.PodIPs = []corev1.HostIP{{IP: "127.0.0.1"}}, []corev1.PodIP{{IP: "127.0.0.1"}}
		s.StartTime = &started
		s.Conditions = conditions(corev1.ConditionTrue)
		s.ContainerStatuses = []corev1.ContainerStatus{{Name: ctr.Name, Image: ctr.Image, Ready: true, Started: new(true),
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: started}}}}
		s.InitContainerStatuses = initStatus
	})
	// Once the Running status is written, a deletion may find the process.
	n.mu.Lock()
	if pod, err := n.c.Client.CoreV1().Pods(p.ns).Get(n.ctx, p.name, metav1.GetOptions{}); err == nil && pod.DeletionTimestamp != nil && !p.stopping {
		p.stopping = true
		grace := time.Duration(0)
		if pod.DeletionGracePeriodSeconds != nil {
			grace = time.Duration(*pod.DeletionGracePeriodSeconds) * time.Second
		}
		n.wg.Add(1)
		go n.kill(p, stopSignal(pod), grace)
	}
	n.mu.Unlock()
	code := exitCode(cmd.Wait())
	p.logs.close()
	if len(sidecars) > 0 {
		// The kubelet stops sidecars once the main containers ended,
		// within the Pod's grace period.
		grace := time.Duration(0)
		if pod.Spec.TerminationGracePeriodSeconds != nil {
			grace = time.Duration(*pod.Spec.TerminationGracePeriodSeconds) * time.Second
		}
		if cur, err := n.c.Client.CoreV1().Pods(p.ns).Get(n.ctx, p.name, metav1.GetOptions{}); err == nil && cur.DeletionGracePeriodSeconds != nil {
			grace = time.Duration(*cur.DeletionGracePeriodSeconds) * time.Second
		}
		stopSidecars(grace)
	}
	close(p.exited)
	n.mu.Lock()
	reason := p.reason
	n.mu.Unlock()
	msg := ""
	switch {
	case reason != "":
	case code == 0:
		reason = "Completed"
	default:
		reason = "Error"
	}
	if reason == "Evicted" {
		msg = "The node was low on resource: memory."
	}
	n.finish(p, ctr, code, reason, msg, started.Time, initStatus)
}

// command makes the process of container c of pod: the binary its image
// maps to, with its env, where a value under one of its volumes' mount
// paths names that volume's directory instead (there is no mount
// namespace): a claim's directory under the cluster's files, or an
// emptyDir's made for the Pod.
func (n *Node) command(pod *corev1.Pod, c corev1.Container, out io.Writer) (*exec.Cmd, error) {
	bin, ok := n.images[c.Image]
	if !ok {
		return nil, fmt.Errorf("image %q is not on this node", c.Image)
	}
	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		for _, v := range pod.Spec.Volumes {
			if v.Name != m.Name {
				continue
			}
			var dir string
			switch {
			case v.PersistentVolumeClaim != nil:
				dir = filepath.Join(n.c.Dir, "volumes", pod.Namespace, v.PersistentVolumeClaim.ClaimName)
			case v.EmptyDir != nil:
				dir = filepath.Join(n.c.Dir, "emptydir", string(pod.UID), v.Name)
			default:
				continue
			}
			os.MkdirAll(dir, 0o777)
			mounts[m.MountPath] = dir
		}
	}
	var env []string
	for _, e := range c.Env {
		v := e.Value
		for path, dir := range mounts {
			if v == path || strings.HasPrefix(v, path+"/") {
				v = dir + strings.TrimPrefix(v, path)
			}
		}
		env = append(env, e.Name+"="+v)
	}
	args := c.Args
	if len(c.Command) > 1 {
		args = append(c.Command[1:], args...)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	return cmd, nil
}

// stopProcess sends SIGTERM to a running container's process group and
// SIGKILL after grace, and waits for it.
func stopProcess(cmd *exec.Cmd, grace time.Duration) {
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-done:
		return
	case <-time.After(grace):
	}
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	<-done
}

func exitCode(err error) int {
	if ee, ok := err.(*exec.ExitError); ok {
		ws := ee.Sys().(syscall.WaitStatus)
		if ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ws.ExitStatus()
	}
	return 0
}

// finishInit ends a Pod whose init container ic failed, as the kubelet does
// with restartPolicy Never: phase Failed, the main container never started.
func (n *Node) finishInit(p *proc, pod *corev1.Pod, done []corev1.ContainerStatus, ic corev1.Container, code int, reason, msg string) {
	now := metav1.Now()
	st := append(slices.Clone(done), corev1.ContainerStatus{Name: ic.Name, Image: ic.Image,
		State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: int32(code), Reason: reason, Message: msg, FinishedAt: now}}})
	n.status(p, func(s *corev1.PodStatus) {
		s.Phase = corev1.PodFailed
		s.Conditions = conditions(corev1.ConditionFalse)
		s.InitContainerStatuses = st
		s.ContainerStatuses = []corev1.ContainerStatus{{Name: pod.Spec.Containers[0].Name, Image: pod.Spec.Containers[0].Image,
			State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "PodInitializing"}}}}
	})
	n.mu.Lock()
	p.done = true
	stopping := p.stopping
	n.mu.Unlock()
	close(p.exited)
	if cur, err := n.c.Client.CoreV1().Pods(p.ns).Get(n.ctx, p.name, metav1.GetOptions{}); err == nil && (cur.DeletionTimestamp != nil || stopping) && cur.UID == p.uid {
		n.finalDelete(p.ns, p.name, p.uid)
	}
}

// finish writes the terminated status and, when the Pod is being deleted,
// deletes it.
func (n *Node) finish(p *proc, ctr corev1.Container, code int, reason, msg string, started time.Time, initStatus []corev1.ContainerStatus) {
	now := metav1.Now()
	n.status(p, func(s *corev1.PodStatus) {
		s.Phase = corev1.PodFailed
		if code == 0 {
			s.Phase = corev1.PodSucceeded
		}
		s.Conditions = conditions(corev1.ConditionFalse)
		ctrReason := reason
		if reason == "Evicted" {
			s.Reason, s.Message = reason, msg
			ctrReason = "Error"
		}
		s.ContainerStatuses = []corev1.ContainerStatus{{Name: ctr.Name, Image: ctr.Image, Started: new(false),
			State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
				ExitCode: int32(code), Reason: ctrReason, StartedAt: metav1.NewTime(started), FinishedAt: now,
			}}}}
		s.InitContainerStatuses = initStatus
	})
	n.mu.Lock()
	p.done = true
	stopping := p.stopping
	n.mu.Unlock()
	if pod, err := n.c.Client.CoreV1().Pods(p.ns).Get(n.ctx, p.name, metav1.GetOptions{}); err == nil && (pod.DeletionTimestamp != nil || stopping) && pod.UID == p.uid {
		n.finalDelete(p.ns, p.name, p.uid)
	}
}

func conditions(ready corev1.ConditionStatus) []corev1.PodCondition {
	now := metav1.Now()
	var cs []corev1.PodCondition
	for _, t := range []corev1.PodConditionType{corev1.PodScheduled, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady} {
		s := corev1.ConditionTrue
		if t == corev1.ContainersReady || t == corev1.PodReady {
			s = ready
		}
		cs = append(cs, corev1.PodCondition{Type: t, Status: s, LastTransitionTime: now})
	}
	return cs
}

// status applies mutate to the Pod's status and writes it, retrying on
// conflicts.
func (n *Node) status(p *proc, mutate func(*corev1.PodStatus)) {
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		pod, err := n.c.Client.CoreV1().Pods(p.ns).Get(n.ctx, p.name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if pod.UID != p.uid {
			return nil
		}
		mutate(&pod.Status)
		_, err = n.c.Client.CoreV1().Pods(p.ns).UpdateStatus(n.ctx, pod, metav1.UpdateOptions{})
		return err
	})
	if err != nil && !apierrors.IsNotFound(err) && n.ctx.Err() == nil {
		fmt.Fprintf(os.Stderr, "kubetest: status of %s/%s: %v\n", p.ns, p.name, err)
	}
}

// OOMKill kills the Pod's container as the kernel's OOM killer would, and
// the status says OOMKilled.
func (n *Node) OOMKill(ns, name string) error { return n.killFor(ns, name, "OOMKilled") }

// Evict kills the Pod's container as the kubelet's eviction manager does
// under memory pressure: phase Failed, reason Evicted.
func (n *Node) Evict(ns, name string) error { return n.killFor(ns, name, "Evicted") }

func (n *Node) killFor(ns, name, reason string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, p := range n.pods {
		if p.ns == ns && p.name == name && p.cmd != nil {
			p.reason = reason
			return syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		}
	}
	return fmt.Errorf("%w: %s/%s", ErrNoPod, ns, name)
}

// serveLogs answers GET /containerLogs/NS/POD/CONTAINER[?follow=true], as
// the kubelet does for the API server's pods/log.
func (n *Node) serveLogs(w http.ResponseWriter, r *http.Request) {
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/containerLogs/"), "/")
	if len(parts) < 2 {
		http.NotFound(w, r)
		return
	}
	var p *proc
	n.mu.Lock()
	for _, q := range n.pods {
		if q.ns == parts[0] && q.name == parts[1] {
			p = q
		}
	}
	var logs *logBuf
	if p != nil {
		logs = p.logs
		if len(parts) > 2 && p.initLogs[parts[2]] != nil {
			logs = p.initLogs[parts[2]]
		}
	}
	n.mu.Unlock()
	if p == nil {
		http.Error(w, "no such container", http.StatusNotFound)
		return
	}
	follow, _ := strconv.ParseBool(r.URL.Query().Get("follow"))
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(http.StatusOK)
	fl, _ := w.(http.Flusher)
	off := 0
	for {
		chunk, more, wait := logs.read(off)
		if len(chunk) > 0 {
			if _, err := w.Write(chunk); err != nil {
				return
			}
			if fl != nil {
				fl.Flush()
			}
			off += len(chunk)
			continue
		}
		if !more || !follow {
			return
		}
		select {
		case <-wait:
		case <-r.Context().Done():
			return
		case <-n.ctx.Done():
			return
		}
	}
}

// logBuf is a container's output: appended to while it runs, read from any
// offset by log followers.
type logBuf struct {
	mu     sync.Mutex
	b      []byte
	closed bool
	wake   chan struct{}
}

func newLogBuf() *logBuf { return &logBuf{wake: make(chan struct{})} }

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b = append(l.b, p...)
	close(l.wake)
	l.wake = make(chan struct{})
	return len(p), nil
}

func (l *logBuf) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	close(l.wake)
	l.wake = make(chan struct{})
}

// tail returns the last KiB written.
func (l *logBuf) tail() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]byte(nil), l.b[max(0, len(l.b)-1024):]...)
}

// read returns what follows off, whether more may come, and a channel
// closed when it does.
func (l *logBuf) read(off int) ([]byte, bool, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if off < len(l.b) {
		return append([]byte(nil), l.b[off:]...), true, nil
	}
	return nil, !l.closed, l.wake
}

var _ io.Writer = (*logBuf)(nil)
