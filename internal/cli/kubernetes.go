package cli

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/berthhq/berth/runtime"
	"github.com/berthhq/berth/runtime/kubernetes"
)

// kubeOptions are berth serve's settings for --runtime kubernetes.
type kubeOptions struct {
	Kubeconfig    string
	Namespace     string
	Instance      string
	NodeSelector  string
	Tolerations   string
	StorageClass  string
	VolumeSize    string
	BackendAPIURL string
	RunAsUser     int64
	PullSecrets   string
	Port          int
	StateImage    string
}

func (k *kubeOptions) flags(fs *flag.FlagSet) {
	fs.StringVar(&k.Kubeconfig, "kubeconfig", envOr("BERTH_KUBECONFIG", ""), "kubernetes runtime: kubeconfig file (BERTH_KUBECONFIG; default: in-cluster, from the Pod's service account)")
	fs.StringVar(&k.Namespace, "kube-namespace", envOr("BERTH_KUBE_NAMESPACE", "default"), "kubernetes runtime: the namespace of backends' Pods and claims (BERTH_KUBE_NAMESPACE)")
	fs.StringVar(&k.Instance, "kube-instance", envOr("BERTH_KUBE_INSTANCE", ""), "kubernetes runtime: the owner label of this Berth's Pods (BERTH_KUBE_INSTANCE; default: the node id with a shared store, else one derived from --data-dir)")
	fs.StringVar(&k.NodeSelector, "kube-node-selector", envOr("BERTH_KUBE_NODE_SELECTOR", ""), "kubernetes runtime: label=value[,label=value…] every backend Pod's nodeSelector (BERTH_KUBE_NODE_SELECTOR)")
	fs.StringVar(&k.Tolerations, "kube-tolerations", envOr("BERTH_KUBE_TOLERATIONS", ""), "kubernetes runtime: key[=value][:Effect][,…] tolerations of every backend Pod (BERTH_KUBE_TOLERATIONS)")
	fs.StringVar(&k.StorageClass, "kube-storage-class", envOr("BERTH_KUBE_STORAGE_CLASS", ""), "kubernetes runtime: storage class of state mode volume's claims (BERTH_KUBE_STORAGE_CLASS; default: the cluster's)")
	fs.StringVar(&k.VolumeSize, "kube-volume-size", envOr("BERTH_KUBE_VOLUME_SIZE", "1Gi"), "kubernetes runtime: size of each key's claim in state mode volume (BERTH_KUBE_VOLUME_SIZE)")
	fs.StringVar(&k.BackendAPIURL, "kube-backend-api-url", envOr("BERTH_KUBE_BACKEND_API_URL", ""), "kubernetes runtime: the backend API's URL as Pods reach it, e.g. http://berth-backend-api.berth.svc:7071 (BERTH_KUBE_BACKEND_API_URL; needed for state mode blob)")
	fs.Func("kube-run-as-user", "kubernetes runtime: uid (and gid, fsGroup) of backends; never 0 (BERTH_KUBE_RUN_AS_USER; default 65534)", func(s string) error {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil || v <= 0 {
			return fmt.Errorf("%q is not a positive uid", s)
		}
		k.RunAsUser = v
		return nil
	})
	if v, err := strconv.ParseInt(envOr("BERTH_KUBE_RUN_AS_USER", "0"), 10, 64); err == nil && v > 0 {
		k.RunAsUser = v
	}
	fs.StringVar(&k.StateImage, "kube-state-image", envOr("BERTH_KUBE_STATE_IMAGE", ""), "kubernetes runtime: the image (entrypoint berth) that runs berth state-sync in Pods of state mode dir (BERTH_KUBE_STATE_IMAGE; default: the image of the Pod Berth runs in, when it runs in one)")
	fs.IntVar(&k.Port, "kube-backend-port", 8080, "kubernetes runtime: the port backends listen on ($PORT); 0 picks a free port of Berth's host for each, for test nodes whose Pods share one network")
	fs.StringVar(&k.PullSecrets, "kube-image-pull-secrets", envOr("BERTH_KUBE_IMAGE_PULL_SECRETS", ""), "kubernetes runtime: name[,name…] of Secrets backend Pods pull images with (BERTH_KUBE_IMAGE_PULL_SECRETS)")
}

// config turns the flags into the runtime's Config; errors name the flag.
func (k *kubeOptions) config(instance string, log *slog.Logger) (kubernetes.Config, error) {
	cfg := kubernetes.Config{
		Kubeconfig:   k.Kubeconfig,
		Namespace:    k.Namespace,
		Instance:     instance,
		StorageClass: k.StorageClass,
		VolumeSize:   k.VolumeSize,
		StateImage:   k.StateImage,
		BackendAPI:   k.BackendAPIURL != "",
		RunAsUser:    k.RunAsUser,
		Port:         k.Port,
		HostPorts:    k.Port == 0,
		Logger:       log.With("runtime", kubernetes.Name),
	}
	if k.Port < 0 || k.Port > 65535 {
		return cfg, usagef("--kube-backend-port %d: give a TCP port, or 0", k.Port)
	}
	if k.NodeSelector != "" {
		cfg.NodeSelector = map[string]string{}
		for _, kv := range strings.Split(k.NodeSelector, ",") {
			name, value, ok := strings.Cut(strings.TrimSpace(kv), "=")
			if !ok || name == "" {
				return cfg, usagef("--kube-node-selector: %q is not label=value", kv)
			}
			cfg.NodeSelector[name] = value
		}
	}
	if k.Tolerations != "" {
		for _, s := range strings.Split(k.Tolerations, ",") {
			t, err := parseToleration(strings.TrimSpace(s))
			if err != nil {
				return cfg, usagef("--kube-tolerations: %v", err)
			}
			cfg.Tolerations = append(cfg.Tolerations, t)
		}
	}
	for _, s := range strings.Split(k.PullSecrets, ",") {
		if s = strings.TrimSpace(s); s != "" {
			cfg.ImagePullSecrets = append(cfg.ImagePullSecrets, s)
		}
	}
	if k.BackendAPIURL != "" {
		if u, err := url.Parse(k.BackendAPIURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return cfg, usagef("--kube-backend-api-url: %q is not an http(s) URL", k.BackendAPIURL)
		}
	}
	return cfg, nil
}

// parseToleration reads key[=value][:Effect]; a key alone tolerates every
// value and effect of that taint key ("Exists").
func parseToleration(s string) (corev1.Toleration, error) {
	var t corev1.Toleration
	rest, effect, hasEffect := strings.Cut(s, ":")
	if hasEffect {
		switch e := corev1.TaintEffect(effect); e {
		case corev1.TaintEffectNoSchedule, corev1.TaintEffectPreferNoSchedule, corev1.TaintEffectNoExecute:
			t.Effect = e
		default:
			return t, fmt.Errorf("%q: effect must be NoSchedule, PreferNoSchedule or NoExecute", s)
		}
	}
	key, value, hasValue := strings.Cut(rest, "=")
	if key == "" {
		return t, fmt.Errorf("%q: no taint key", s)
	}
	t.Key = key
	if hasValue {
		t.Operator, t.Value = corev1.TolerationOpEqual, value
	} else {
		t.Operator = corev1.TolerationOpExists
	}
	return t, nil
}

// openKubernetes connects the kubernetes runtime. Its Pods carry this
// Berth's node id (replicas sharing a store) or the data dir's instance
// name, so List and the removal of orphans see only its own.
func openKubernetes(ctx context.Context, o *serverOptions, log *slog.Logger) (runtime.Runtime, error) {
	instance := o.Kube.Instance
	if instance == "" {
		var err error
		if isShared(o) {
			instance, err = nodeID(o)
		} else {
			instance, err = dockerInstance(o)
		}
		if err != nil {
			return nil, err
		}
	}
	cfg, err := o.Kube.config(instance, log)
	if err != nil {
		return nil, err
	}
	rt, err := kubernetes.New(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes runtime: %w", err)
	}
	return rt, nil
}
