package kubetest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
)

// Annotations the kwok stages of KwokNode read: a Pod that gets
// ExitCodeAnnotation terminates with that code, and the reason in
// ExitReasonAnnotation ("OOMKilled", "Error", …).
const (
	ExitCodeAnnotation   = "berth.test/exit-code"
	ExitReasonAnnotation = "berth.test/exit-reason"
)

// KwokPodCIDR is where kwok takes the IPs of Pods on a KwokNode from: a
// loopback range, so a Pod's address is one this host answers on (a test
// server listening on all interfaces answers for every such Pod), and
// nothing is ever sent off the machine.
const KwokPodCIDR = "127.1.0.0/16"

// kwokStages keep kwok's nodes Ready and drive the lifecycle of Pods on kwok's nodes: Running with an
// IP from the node's podCIDR as soon as they are bound; terminated with the
// code and reason of the exit annotations once those are set; on deletion,
// terminated with 0 and then deleted.
const kwokStages = `apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: berth-node-ready
spec:
  resourceRef: {apiGroup: v1, kind: Node}
  selector:
    matchExpressions:
    - {key: '.status.conditions.[] | select( .type == "Ready" ) | .status', operator: NotIn, values: ["True"]}
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      - {type: Ready, status: "True", reason: KwokReady, lastHeartbeatTime: {{ $now | Quote }}, lastTransitionTime: {{ $now | Quote }}}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: berth-pod-running
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - {key: .metadata.deletionTimestamp, operator: DoesNotExist}
    - {key: .status.phase, operator: In, values: [Pending]}
  next:
    statusTemplate: |
      {{ $now := Now }}
      phase: Running
      startTime: {{ $now | Quote }}
      conditions:
      - {type: Initialized, status: "True", lastTransitionTime: {{ $now | Quote }}}
      - {type: Ready, status: "True", lastTransitionTime: {{ $now | Quote }}}
      - {type: ContainersReady, status: "True", lastTransitionTime: {{ $now | Quote }}}
      containerStatuses:
      {{ range .spec.containers }}
      - {name: {{ .name | Quote }}, image: {{ .image | Quote }}, ready: true, started: true, restartCount: 0, state: {running: {startedAt: {{ $now | Quote }}}}}
      {{ end }}
      {{ with NodeIPsWith .spec.nodeName }}
      hostIP: {{ index . 0 | Quote }}
      {{ end }}
      {{ with PodIPsWith .spec.nodeName false .metadata.uid .metadata.name .metadata.namespace }}
      podIP: {{ index . 0 | Quote }}
      podIPs:
      {{ range . }}
      - ip: {{ . | Quote }}
      {{ end }}
      {{ end }}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: berth-pod-exit
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - {key: .status.phase, operator: In, values: [Running]}
    - {key: '.metadata.annotations["` + ExitCodeAnnotation + `"]', operator: Exists}
  next:
    statusTemplate: |
      {{ $now := Now }}
      {{ $code := index .metadata.annotations "` + ExitCodeAnnotation + `" }}
      {{ $reason := or (index .metadata.annotations "` + ExitReasonAnnotation + `") "Error" }}
      phase: {{ if eq $code "0" }}Succeeded{{ else }}Failed{{ end }}
      conditions:
      - {type: Ready, status: "False", lastTransitionTime: {{ $now | Quote }}}
      - {type: ContainersReady, status: "False", lastTransitionTime: {{ $now | Quote }}}
      containerStatuses:
      {{ range .spec.containers }}
      - {name: {{ .name | Quote }}, image: {{ .image | Quote }}, ready: false, started: false, restartCount: 0, state: {terminated: {exitCode: {{ $code }}, reason: {{ $reason | Quote }}, startedAt: {{ $now | Quote }}, finishedAt: {{ $now | Quote }}}}}
      {{ end }}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: berth-pod-stop
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - {key: .metadata.deletionTimestamp, operator: Exists}
    - {key: .status.phase, operator: In, values: [Running]}
  next:
    statusTemplate: |
      {{ $now := Now }}
      phase: Succeeded
      containerStatuses:
      {{ range .spec.containers }}
      - {name: {{ .name | Quote }}, image: {{ .image | Quote }}, ready: false, started: false, restartCount: 0, state: {terminated: {exitCode: 0, reason: Completed, startedAt: {{ $now | Quote }}, finishedAt: {{ $now | Quote }}}}}
      {{ end }}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: berth-pod-delete
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - {key: .metadata.deletionTimestamp, operator: Exists}
    - {key: .status.phase, operator: NotIn, values: [Running]}
  next:
    delete: true
`

// KwokNode is a Node whose Pods' lifecycles kwok drives (nothing runs in
// them): see kwokStages. Pods whose nodeSelector its labels satisfy are
// bound to it (no scheduler runs here).
type KwokNode struct {
	Name   string
	Labels map[string]string
	cmd    *exec.Cmd
	cancel context.CancelFunc
	c      *Cluster
}

// NewKwokNode registers a Node managed by a kwok process of its own, which
// runs until Close.
func (c *Cluster) NewKwokNode(name string, nodeLabels map[string]string) (*KwokNode, error) {
	ctx, cancel := context.WithCancel(context.Background())
	k := &KwokNode{Name: name, Labels: nodeLabels, cancel: cancel, c: c}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: nodeLabels, Annotations: map[string]string{"kwok.x-k8s.io/node": "fake"}},
		Spec:       corev1.NodeSpec{PodCIDR: KwokPodCIDR, PodCIDRs: []string{KwokPodCIDR}},
	}
	node, err := c.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("create kwok node %s: %w", name, err)
	}
	qty := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1000"), corev1.ResourceMemory: resource.MustParse("1Ti"), corev1.ResourcePods: resource.MustParse("10000")}
	now := metav1.Now()
	node.Status = corev1.NodeStatus{Capacity: qty, Allocatable: qty,
		Addresses:  []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "127.0.0.1"}},
		Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KwokReady", LastHeartbeatTime: now, LastTransitionTime: now}}}
	if _, err := c.Client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		k.Close()
		return nil, err
	}
	stages := filepath.Join(c.Dir, "kwok-"+name+".yaml")
	if err := os.WriteFile(stages, []byte(kwokStages), 0o600); err != nil {
		k.Close()
		return nil, err
	}
	log, _ := os.Create(filepath.Join(c.Dir, "kwok-"+name+".log"))
	k.cmd = exec.Command(filepath.Join(c.tools, "kwok"),
		"--kubeconfig", c.Kubeconfig,
		"--config", stages,
		"--manage-single-node", name,
		"--cidr", KwokPodCIDR,
		"--node-ip", "127.0.0.1",
		"--node-name", name)
	k.cmd.Stdout, k.cmd.Stderr = log, log
	if err := c.run(k.cmd); err != nil {
		k.Close()
		return nil, fmt.Errorf("kwok: %w", err)
	}

	factory := informers.NewSharedInformerFactory(c.Client, 0)
	inf := factory.Core().V1().Pods().Informer()
	bind := func(o any) {
		pod := o.(*corev1.Pod)
		if pod.Spec.NodeName == "" && pod.DeletionTimestamp == nil && len(pod.Spec.NodeSelector) > 0 &&
			labels.SelectorFromSet(pod.Spec.NodeSelector).Matches(labels.Set(nodeLabels)) {
			c.Client.CoreV1().Pods(pod.Namespace).Bind(ctx, &corev1.Binding{
				ObjectMeta: metav1.ObjectMeta{Name: pod.Name, UID: pod.UID},
				Target:     corev1.ObjectReference{Kind: "Node", Name: name},
			}, metav1.CreateOptions{})
		}
	}
	inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: bind, UpdateFunc: func(_, o any) { bind(o) }})
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	return k, nil
}

// Close stops kwok and removes the Node.
func (k *KwokNode) Close() {
	k.cancel()
	if k.cmd != nil && k.cmd.Process != nil {
		k.cmd.Process.Kill()
		k.cmd.Wait()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10e9)
	defer cancel()
	k.c.Client.CoreV1().Nodes().Delete(ctx, k.Name, metav1.DeleteOptions{})
}
