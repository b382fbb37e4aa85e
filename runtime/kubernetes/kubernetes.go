// Package kubernetes is the runtime that runs each backend as one Pod in a
// namespace of a Kubernetes cluster, through client-go. It watches Pods with
// one shared informer, filtered by its labels (never polls), and it never
// creates a Service per backend: the proxy dials the Pod's IP.
//
// Pods. One per backend, named "berth-" + the backend id (lower case, "_"
// as "-"), restartPolicy Never, labelled with LabelManaged, LabelInstance
// (the Berth node that owns it), LabelBackend and LabelKeyHash (the key is
// free text, so the label is a hash; the key itself is in AnnotationKey).
// The container "backend" runs spawn.image (spawn.command replaces its
// entrypoint and arguments), listens on Spec.Port (Config.Port, 8080, when
// the spec has none: every Pod has its own network namespace) and gets
// Spec.Env. imagePullPolicy comes from pull_policy; resources are requests
// and limits alike (spawn's, else Config's: a Guaranteed Pod); the Pod's
// terminationGracePeriodSeconds is grace_seconds. Kubernetes has no
// per-Pod pids limit (the kubelet's podPidsLimit applies), so
// resources.pids is not applied.
//
// Hardening: runAsNonRoot with Config.RunAsUser (65534 unless set: an image
// cannot be inspected from here, and a FROM scratch image names no user),
// fsGroup the same, seccomp RuntimeDefault, all capabilities dropped, no
// privilege escalation, no service account token, no service links, and
// with spawn.read_only_root_fs a read-only root with a memory-backed /tmp.
//
// Outcomes. Start returns once the Pod runs with an IP (readiness is
// Berth's own HTTP probe, as for every runtime) and fails with Kubernetes'
// own reason and message when the image cannot be pulled (ErrImagePull,
// ImagePullBackOff, InvalidImageName, ErrImageNeverPull) or the container
// cannot be made, and after the spawn's startup timeout while the Pod is
// still pending (unschedulable, …). Wait reports the container's exit code
// and OOMKilled; a Pod evicted by its node, or deleted before it ended
// (its node was lost), ends with Exit.Err wrapping runtime.ErrLost.
//
// Stop deletes the Pod with the grace period asked for (at least one
// second: a zero grace period would be a forced deletion, which removes
// the Pod before its container is killed, so nobody would learn how it
// ended). Kubernetes has no way to send a chosen signal: the kubelet sends
// the image's STOPSIGNAL. Berth writes the signal it wants into
// AnnotationStopSignal before the deletion, for node agents that honour it
// (the test node does); on a stock kubelet spawn.stop_signal should match
// the image's STOPSIGNAL. A Pod that already ended is left for Cleanup,
// which deletes it, so List sees it until then.
//
// State. Mode blob reaches the backend API at the URL Berth is configured
// with for this runtime (a Service in front of Berth's replicas; see
// deploy/kubernetes). Mode volume is one PersistentVolumeClaim per key
// (Config.StorageClass, Config.VolumeSize), made on first use and reused by
// the key's next backend, mounted at /berth/state; a start is refused
// (runtime.ErrVolumeBusy) while any Pod that mounts the claim, of any Berth,
// has not ended, so two live Pods never share it. Mode dir is an emptyDir
// at /berth/state that the init container "state-restore" fills from the
// backend API before the backend starts, and that the native sidecar
// "state-sync" (an init container with restartPolicy Always) saves every
// save interval and once more when it is stopped, which the kubelet does
// after the backend's container ended; both run `berth state-sync` from
// Config.StateImage with the backend's secret, and Berth stores their saves
// with the backend's fencing token. Wait reports the Pod's end only once
// the sidecar ended too, so Berth's final save follows the sidecar's.
//
// Logs are read through pods/log from the container's start, at Start and
// at Recover, so a recovered backend's logs repeat what an earlier Berth
// captured. Stop opens the stream before it deletes the Pod, if it is not
// open yet: a deleted Pod's output goes once its node has removed it.
package kubernetes

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/runtime"
)

// Name is the runtime's name in records.
const Name = "kubernetes"

// Labels and annotations on every Pod (and LabelManaged, LabelKeyHash on
// every claim).
const (
	LabelManaged  = "berth.dev/managed"
	LabelInstance = "berth.dev/instance"
	LabelBackend  = "berth.dev/backend"
	LabelKeyHash  = "berth.dev/key-hash"
	// LabelVolume names the PersistentVolumeClaim a mode-volume Pod
	// mounts, so Start can tell whether a live Pod still has it.
	LabelVolume   = "berth.dev/volume"
	AnnotationKey = "berth.dev/key"
	// AnnotationStopSignal is the signal Stop asked for (see the package
	// doc).
	AnnotationStopSignal = "berth.dev/stop-signal"
)

const (
	containerName    = "backend"
	restoreName      = "state-restore"
	syncName         = "state-sync"
	stateMount       = "/berth/state"
	defaultPort      = 8080
	defaultInstance  = "default"
	defaultNamespace = "default"
	defaultUser      = 65534
	defaultMemoryMB  = 512
	defaultCPU       = 1000
	defaultVolume    = "1Gi"
)

var (
	_ runtime.Runtime     = (*Runtime)(nil)
	_ runtime.Lister      = (*Runtime)(nil)
	_ runtime.LateStarter = (*Runtime)(nil)
	_ runtime.PortChooser = (*Runtime)(nil)
)

// Config configures the kubernetes runtime. Zero values mean the defaults.
type Config struct {
	// REST reaches the API server; when nil, Kubeconfig is read, and when
	// that is empty too, the in-cluster configuration (the Pod's service
	// account) is used.
	REST       *rest.Config
	Kubeconfig string
	// Namespace holds the backends' Pods and claims (default "default").
	Namespace string
	// Instance identifies this Berth (its node id) among those sharing a
	// namespace (default "default"): List, and so the removal of orphans,
	// sees only Pods labelled with it.
	Instance string
	// Port is where backends listen (default 8080): ChoosePort's answer,
	// and what a spec that names none gets.
	Port int
	// HostPorts makes ChoosePort pick a free port of Berth's host for each
	// backend instead, for nodes whose Pods share one network (the tests'
	// node agent).
	HostPorts bool
	// NodeSelector and Tolerations go into every Pod.
	NodeSelector map[string]string
	Tolerations  []corev1.Toleration
	// RunAsUser is the uid (and gid, and fsGroup) backends run as (default
	// 65534); never 0.
	RunAsUser int64
	// MemoryMB and CPUMillis are the limits of spawns that set none
	// (defaults 512 and 1000).
	MemoryMB  int
	CPUMillis int
	// StorageClass and VolumeSize shape the claims of mode volume (default:
	// the cluster's default class, 1Gi).
	StorageClass string
	VolumeSize   string
	// StateImage runs `berth state-sync` in the Pods of state mode dir
	// (an image whose entrypoint is berth: Berth's own). Without it mode
	// dir is refused.
	StateImage string
	// BackendAPI says that Pods can reach Berth's backend API (a Service
	// in front of the Berth replicas, given to the state layer): modes
	// blob and dir save through it, and are refused without it.
	BackendAPI bool
	// ImagePullSecrets name Secrets in Namespace that every Pod may pull
	// with.
	ImagePullSecrets []string
	Logger           *slog.Logger
}

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

func (c *Config) setDefaults() {
	if c.Namespace == "" {
		c.Namespace = defaultNamespace
	}
	if c.Instance == "" {
		c.Instance = defaultInstance
	}
	if c.Port == 0 {
		c.Port = defaultPort
	}
	if c.RunAsUser == 0 {
		c.RunAsUser = defaultUser
	}
	if c.MemoryMB == 0 {
		c.MemoryMB = defaultMemoryMB
	}
	if c.CPUMillis == 0 {
		c.CPUMillis = defaultCPU
	}
	if c.VolumeSize == "" {
		c.VolumeSize = defaultVolume
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate checks the config after defaults are applied; errors name the
// field.
func (c *Config) Validate() error {
	switch {
	case !dnsLabel.MatchString(c.Namespace) || len(c.Namespace) > 63:
		return fmt.Errorf("kubernetes: Namespace: %q is not a namespace name", c.Namespace)
	case !labelValue.MatchString(c.Instance):
		return fmt.Errorf("kubernetes: Instance: %q cannot be a label value", c.Instance)
	case c.Port < 1 || c.Port > 65535:
		return fmt.Errorf("kubernetes: Port: %d is not a TCP port", c.Port)
	case c.RunAsUser < 0:
		return errors.New("kubernetes: RunAsUser: must not be negative (and 0 is not allowed: backends never run as root)")
	case c.MemoryMB < 4:
		return errors.New("kubernetes: MemoryMB: must be at least 4")
	case c.CPUMillis < 1:
		return errors.New("kubernetes: CPUMillis: must be positive")
	}
	if _, err := resource.ParseQuantity(c.VolumeSize); err != nil {
		return fmt.Errorf("kubernetes: VolumeSize: %q: %v", c.VolumeSize, err)
	}
	return nil
}

var labelValue = regexp.MustCompile(`^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$`)

// Runtime runs backends as Pods. Close it when done.
type Runtime struct {
	cs   kubernetes.Interface
	cfg  Config
	log  *slog.Logger
	pods corelisters.PodNamespaceLister

	mu      sync.Mutex
	changed chan struct{}           // closed and replaced on every Pod event
	exits   map[string]runtime.Exit // by Pod name: how Pods the informer saw ended
	follows map[string]*follower    // by Pod name

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// RESTConfig returns the client configuration from a kubeconfig file, or
// the in-cluster one when path is empty.
func RESTConfig(path string) (*rest.Config, error) {
	if path == "" {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("kubernetes: no kubeconfig given and not in a cluster: %w", err)
		}
		return cfg, nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, fmt.Errorf("kubernetes: kubeconfig %s: %w", path, err)
	}
	return cfg, nil
}

// New connects to the API server and starts watching this Berth's Pods; it
// fails when the API server does not answer or the Pods cannot be listed
// (RBAC) within ctx.
func New(ctx context.Context, cfg Config) (*Runtime, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	rc := cfg.REST
	if rc == nil {
		var err error
		if rc, err = RESTConfig(cfg.Kubeconfig); err != nil {
			return nil, err
		}
	}
	rc = rest.CopyConfig(rc)
	if rc.QPS == 0 {
		rc.QPS, rc.Burst = 50, 100
	}
	// Protobuf, as Kubernetes' own controllers use: a Pod encodes and
	// decodes several times faster than as JSON, in Berth and in the API
	// server, for every create and every informer event on a start's path.
	if rc.ContentType == "" {
		rc.ContentType = "application/vnd.kubernetes.protobuf"
		rc.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes: %w", err)
	}
	if cfg.StateImage == "" && cfg.REST == nil && cfg.Kubeconfig == "" {
		cfg.StateImage = ownImage(ctx, cs, cfg.Logger)
	}
	r := &Runtime{cs: cs, cfg: cfg, log: cfg.Logger, changed: make(chan struct{}), exits: map[string]runtime.Exit{}, follows: map[string]*follower{}}
	r.ctx, r.cancel = context.WithCancel(context.Background())

	selector := labels.SelectorFromSet(labels.Set{LabelManaged: "true", LabelInstance: cfg.Instance}).String()
	factory := informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithNamespace(cfg.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = selector }))
	inf := factory.Core().V1().Pods()
	inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { r.observe(o, false) },
		UpdateFunc: func(_, o any) { r.observe(o, false) },
		DeleteFunc: func(o any) { r.observe(o, true) },
	})
	r.pods = inf.Lister().Pods(cfg.Namespace)
	factory.Start(r.ctx.Done())
	synced := make(chan bool, 1)
	go func() { synced <- cache.WaitForCacheSync(ctx.Done(), inf.Informer().HasSynced) }()
	if ok := <-synced; !ok {
		r.cancel()
		factory.Shutdown()
		return nil, fmt.Errorf("kubernetes: list Pods in namespace %s: no answer from %s before %v", cfg.Namespace, rc.Host, ctx.Err())
	}
	r.wg.Add(1)
	go func() { defer r.wg.Done(); <-r.ctx.Done(); factory.Shutdown() }()
	return r, nil
}

// Close stops the watch and the log followers. Pods keep running; a new
// Runtime recovers them.
func (r *Runtime) Close() error {
	r.cancel()
	r.wg.Wait()
	return nil
}

// Name returns "kubernetes".
func (r *Runtime) Name() string { return Name }

// Caps implements runtime.Runtime: images, no freezing (a Pod has no pause
// in the Kubernetes API), and state modes volume (a claim per key), blob
// when Pods reach the backend API, and dir when they also have a
// StateImage to sync it.
func (r *Runtime) Caps() runtime.Caps {
	modes := []berth.StateMode{berth.StateModeVolume}
	help := "blob and dir need --kube-backend-api-url (the Service in front of Berth's backend API), dir also --kube-state-image"
	if r.cfg.BackendAPI {
		modes = append(modes, berth.StateModeBlob)
		help = "dir needs --kube-state-image"
		if r.cfg.StateImage != "" {
			modes = append(modes, berth.StateModeDir)
			help = ""
		}
	}
	return runtime.Caps{Images: true, StateModes: modes, StateHelp: help}
}

// StartSettle implements runtime.LateStarter: the API server persists a
// create it accepted even if the Berth that sent it died; the informer of
// a restarted Berth sees it within seconds.
func (r *Runtime) StartSettle() time.Duration { return 5 * time.Second }

// ChoosePort implements runtime.PortChooser: Config.Port, or with
// Config.HostPorts a port nothing on this host listens on now.
func (r *Runtime) ChoosePort() (int, error) {
	if !r.cfg.HostPorts {
		return r.cfg.Port, nil
	}
	ln, err := net.Listen("tcp", ":0")
	if err != nil {
		return 0, fmt.Errorf("kubernetes: pick a port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// Namespace is where the runtime's Pods live.
func (r *Runtime) Namespace() string { return r.cfg.Namespace }

// observe records how a Pod ended and wakes the waiters.
func (r *Runtime) observe(o any, deleted bool) {
	if t, ok := o.(cache.DeletedFinalStateUnknown); ok {
		o = t.Obj
	}
	pod, ok := o.(*corev1.Pod)
	if !ok {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if e, ok := podExit(pod); ok {
		r.exits[pod.Name] = e
	} else if deleted {
		if _, ok := r.exits[pod.Name]; !ok {
			r.exits[pod.Name] = runtime.Exit{Code: -1, At: time.Now(), Err: fmt.Errorf("%w: the Pod was deleted before it ended (its node was lost, or someone forced its deletion)", runtime.ErrLost)}
		}
	}
	close(r.changed)
	r.changed = make(chan struct{})
}

// podName is the Pod's name for backend id.
func podName(id string) (string, error) {
	n := "berth-" + strings.ReplaceAll(strings.ToLower(id), "_", "-")
	if len(n) > 63 || !dnsLabel.MatchString(n) {
		return "", fmt.Errorf("backend id %q cannot name a Pod", id)
	}
	return n, nil
}

// keyHash is the label value that stands for key.
func keyHash(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:20])
}

// ownImage returns the image of the Pod this process runs in (its first
// container: Berth's), for Config.StateImage; "" when that cannot be told.
func ownImage(ctx context.Context, cs kubernetes.Interface, log *slog.Logger) string {
	ns, err := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
	name, herr := os.Hostname()
	if err != nil || herr != nil {
		return ""
	}
	pod, err := cs.CoreV1().Pods(strings.TrimSpace(string(ns))).Get(ctx, name, metav1.GetOptions{})
	if err != nil || len(pod.Spec.Containers) == 0 {
		log.Info("the image of Berth's own Pod is unknown: state mode dir needs --kube-state-image", "err", err)
		return ""
	}
	return pod.Spec.Containers[0].Image
}
