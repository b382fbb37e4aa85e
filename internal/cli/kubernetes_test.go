package cli

import (
	"log/slog"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func TestParseToleration(t *testing.T) {
	tests := []struct {
		in      string
		want    corev1.Toleration
		wantErr string
	}{
		{"dedicated", corev1.Toleration{Key: "dedicated", Operator: corev1.TolerationOpExists}, ""},
		{"dedicated=berth", corev1.Toleration{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "berth"}, ""},
		{"dedicated=berth:NoSchedule", corev1.Toleration{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "berth", Effect: corev1.TaintEffectNoSchedule}, ""},
		{"spot:NoExecute", corev1.Toleration{Key: "spot", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute}, ""},
		{"spot:Sometimes", corev1.Toleration{}, "effect must be"},
		{"=x", corev1.Toleration{}, "no taint key"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseToleration(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseToleration(%q) = %v, %v; want an error with %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Errorf("parseToleration(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestKubeOptions_config(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	k := kubeOptions{Namespace: "apps", NodeSelector: "pool=berth, zone=a", Tolerations: "pool=berth:NoSchedule", PullSecrets: "regcred", VolumeSize: "2Gi", Port: 8080}
	cfg, err := k.config("node-1", log)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"pool": "berth", "zone": "a"}; !reflect.DeepEqual(cfg.NodeSelector, want) {
		t.Errorf("NodeSelector %v, want %v", cfg.NodeSelector, want)
	}
	if len(cfg.Tolerations) != 1 || cfg.Tolerations[0].Value != "berth" || cfg.Instance != "node-1" || cfg.ImagePullSecrets[0] != "regcred" || cfg.HostPorts {
		t.Errorf("config %+v", cfg)
	}
	for _, bad := range []struct {
		k    kubeOptions
		flag string
	}{
		{kubeOptions{NodeSelector: "pool"}, "--kube-node-selector"},
		{kubeOptions{Tolerations: "a:Never"}, "--kube-tolerations"},
		{kubeOptions{BackendAPIURL: "berth:7071"}, "--kube-backend-api-url"},
		{kubeOptions{Port: 70000}, "--kube-backend-port"},
	} {
		if _, err := bad.k.config("n", log); err == nil || !strings.Contains(err.Error(), bad.flag) {
			t.Errorf("config(%+v) = %v, want an error naming %s", bad.k, err, bad.flag)
		}
	}
}
