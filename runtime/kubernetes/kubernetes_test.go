package kubernetes

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/internal/testbin"
	"github.com/berthhq/berth/runtime"
)

// started is one backend a test started; stopped and cleaned up when the
// test ends.
type started struct {
	r *Runtime
	h *runtime.Handle
}

func start(t *testing.T, r *Runtime, spec runtime.Spec) *started {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	spec.Logs = io.Discard
	h, err := r.Start(ctx, spec)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), patience)
		defer cancel()
		if err := r.Stop(ctx, h, "", 0); err != nil {
			t.Errorf("Stop: %v", err)
		}
		if err := r.Cleanup(ctx, h); err != nil {
			t.Errorf("Cleanup: %v", err)
		}
	})
	return &started{r: r, h: h}
}

func (s *started) pod(t *testing.T) *corev1.Pod {
	t.Helper()
	st, err := handleState(s.h)
	if err != nil {
		t.Fatal(err)
	}
	pod, err := s.r.cs.CoreV1().Pods(st.Namespace).Get(context.Background(), st.Pod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return pod
}

// answer waits until the backend answers GET / over HTTP at its Pod's
// address.
func (s *started) answer(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for {
		resp, err := http.Get("http://" + s.h.Addr + "/")
		if err == nil {
			resp.Body.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET / at %s: %v", s.h.Addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *started) wait(t *testing.T) runtime.Exit {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	e, err := s.r.Wait(ctx, s.h)
	if err != nil {
		t.Fatalf("Wait: %v", err)
	}
	return e
}

func TestRuntime_Start_pod(t *testing.T) {
	t.Parallel()
	tol := []corev1.Toleration{{Key: "berth.dev/backends", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}}
	r := newRuntime(t, Config{Tolerations: tol, RunAsUser: 1234})
	spec := testSpec(t, testID(), map[string]string{"TB_HELLO": "world"})
	spec.Spawn.GraceSeconds = new(7)
	spec.Spawn.PullPolicy = "never"
	spec.Spawn.ReadOnlyRootFS = true
	spec.Spawn.Resources = berth.Resources{MemoryMB: 64, CPUMillis: 250}
	s := start(t, r, spec)
	s.answer(t)
	pod := s.pod(t)

	if pod.Spec.RestartPolicy != corev1.RestartPolicyNever {
		t.Errorf("restartPolicy %s, want Never", pod.Spec.RestartPolicy)
	}
	if g := pod.Spec.TerminationGracePeriodSeconds; g == nil || *g != 7 {
		t.Errorf("terminationGracePeriodSeconds %v, want 7", g)
	}
	want := map[string]string{LabelManaged: "true", LabelInstance: r.cfg.Instance, LabelBackend: spec.BackendID, LabelKeyHash: keyHash(spec.Key)}
	for k, v := range want {
		if pod.Labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, pod.Labels[k], v)
		}
	}
	if pod.Annotations[AnnotationKey] != spec.Key {
		t.Errorf("annotation %s = %q, want %q", AnnotationKey, pod.Annotations[AnnotationKey], spec.Key)
	}
	if pod.Spec.NodeSelector["berth.test/node"] != "kubetest" || !slices.Equal(pod.Spec.Tolerations[:1], tol) {
		t.Errorf("nodeSelector %v, tolerations %v, want the config's", pod.Spec.NodeSelector, pod.Spec.Tolerations)
	}
	if a := pod.Spec.AutomountServiceAccountToken; a == nil || *a {
		t.Error("the service account token is mounted")
	}
	ctr := pod.Spec.Containers[0]
	if ctr.ImagePullPolicy != corev1.PullNever {
		t.Errorf("imagePullPolicy %s, want Never", ctr.ImagePullPolicy)
	}
	env := map[string]string{}
	for _, e := range ctr.Env {
		env[e.Name] = e.Value
	}
	for k, v := range spec.Env {
		if env[k] != v {
			t.Errorf("env %s = %q, want %q", k, env[k], v)
		}
	}
	for _, rl := range []corev1.ResourceList{ctr.Resources.Requests, ctr.Resources.Limits} {
		if rl.Memory().Value() != 64<<20 || rl.Cpu().MilliValue() != 250 {
			t.Errorf("resources %v, want 64Mi and 250m", rl)
		}
	}
	sc := ctr.SecurityContext
	switch {
	case sc == nil:
		t.Fatal("no securityContext")
	case sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser != 1234:
		t.Errorf("runAsNonRoot %v, runAsUser %v, want true and 1234", sc.RunAsNonRoot, sc.RunAsUser)
	case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
		t.Error("privilege escalation allowed")
	case sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0:
		t.Errorf("capabilities %v, want drop ALL", sc.Capabilities)
	case sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault:
		t.Errorf("seccomp %v, want RuntimeDefault", sc.SeccompProfile)
	case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
		t.Error("the root filesystem is writable, with read_only_root_fs")
	}
	if got := s.h.Addr; got != pod.Status.PodIP+":"+env["PORT"] {
		t.Errorf("Handle.Addr %s, want the Pod's IP %s and port %s", got, pod.Status.PodIP, env["PORT"])
	}
}

func TestRuntime_Start_imagePullFailure(t *testing.T) {
	t.Parallel()
	r := newRuntime(t, Config{})
	for _, tt := range []struct{ policy, reason string }{{"", "ErrImagePull"}, {"never", "ErrImageNeverPull"}} {
		spec := testSpec(t, testID(), nil)
		spec.Spawn.Image = "registry.invalid/no/such:image"
		spec.Spawn.PullPolicy = tt.policy
		ctx, cancel := context.WithTimeout(context.Background(), patience)
		h, err := r.Start(ctx, spec)
		cancel()
		if err == nil {
			r.Cleanup(context.Background(), h)
			t.Fatalf("Start of an image that cannot be pulled (%q): no error", tt.policy)
		}
		if !strings.Contains(err.Error(), tt.reason) || !strings.Contains(err.Error(), "registry.invalid/no/such:image") {
			t.Errorf("Start error %q, want Kubernetes' reason %s and its message", err, tt.reason)
		}
		name, _ := podName(spec.BackendID)
		waitGone(t, r, name)
	}
}

// waitGone waits until the Pod is deleted.
func waitGone(t *testing.T, r *Runtime, name string) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for {
		_, err := r.cs.CoreV1().Pods(r.cfg.Namespace).Get(context.Background(), name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Pod %s is still there after a failed start: %v", name, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestRuntime_Start_startupTimeout(t *testing.T) {
	t.Parallel()
	// No node has this label: the Pod stays pending.
	r := newRuntime(t, Config{NodeSelector: map[string]string{"berth.test/node": "none"}})
	spec := testSpec(t, testID(), nil)
	spec.Spawn.StartupTimeoutSeconds = 1
	began := time.Now()
	h, err := r.Start(context.Background(), spec)
	if err == nil {
		r.Cleanup(context.Background(), h)
		t.Fatal("Start of an unschedulable Pod: no error")
	}
	if took := time.Since(began); took > 30*time.Second || !strings.Contains(err.Error(), "startup timeout") {
		t.Errorf("Start: %v after %s, want a startup timeout after 1s", err, took)
	}
	name, _ := podName(spec.BackendID)
	waitGone(t, r, name)
}

func TestRuntime_Wait_outcomes(t *testing.T) {
	t.Parallel()
	_, node, _ := cluster(t)
	r := newRuntime(t, Config{})
	tests := []struct {
		name  string
		kill  func(ns, pod string) error
		check func(t *testing.T, e runtime.Exit)
	}{
		{"OOMKilled", node.OOMKill, func(t *testing.T, e runtime.Exit) {
			if !e.OOMKilled || e.Code != 137 || e.Err != nil {
				t.Errorf("Wait = %+v, want OOMKilled with code 137", e)
			}
		}},
		{"evicted", node.Evict, func(t *testing.T, e runtime.Exit) {
			if !errors.Is(e.Err, runtime.ErrLost) || !strings.Contains(e.Err.Error(), "Evicted") {
				t.Errorf("Wait = %+v, want an Err wrapping runtime.ErrLost that says Evicted", e)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := start(t, r, testSpec(t, testID(), nil))
			s.answer(t)
			st, _ := handleState(s.h)
			if err := tt.kill(st.Namespace, st.Pod); err != nil {
				t.Fatal(err)
			}
			tt.check(t, s.wait(t))
		})
	}

	t.Run("node lost", func(t *testing.T) {
		// A Pod deleted at once (as the Pod garbage collector does for a
		// node that is gone) never reports an exit.
		s := start(t, r, testSpec(t, testID(), nil))
		s.answer(t)
		st, _ := handleState(s.h)
		zero := int64(0)
		if err := r.cs.CoreV1().Pods(st.Namespace).Delete(context.Background(), st.Pod, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
			t.Fatal(err)
		}
		if e := s.wait(t); !errors.Is(e.Err, runtime.ErrLost) {
			t.Errorf("Wait = %+v, want an Err wrapping runtime.ErrLost", e)
		}
	})
}

// TestRuntime_volume: mode volume is one claim per key, which the key's
// next backend mounts again (and finds what the first wrote), and which a
// second backend cannot mount while the first still runs.
func TestRuntime_volume(t *testing.T) {
	t.Parallel()
	c, _, _ := cluster(t)
	r := newRuntime(t, Config{StorageClass: "berth-test", VolumeSize: "64Mi"})
	key := "doc/" + testID()
	volSpec := func() runtime.Spec {
		spec := testSpec(t, testID(), nil)
		spec.Key = key
		spec.StateDir = t.TempDir() // Berth's own directory for the key; the Pod gets the claim
		spec.VolumeLock = filepath.Join(spec.StateDir, ".lock")
		return spec
	}
	first := start(t, r, volSpec())
	first.answer(t)
	pvc, err := r.cs.CoreV1().PersistentVolumeClaims(r.cfg.Namespace).Get(context.Background(), ClaimName(key), metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the key's claim: %v", err)
	}
	if sc := pvc.Spec.StorageClassName; sc == nil || *sc != "berth-test" || pvc.Spec.Resources.Requests.Storage().String() != "64Mi" {
		t.Errorf("claim class %v size %v, want berth-test 64Mi", sc, pvc.Spec.Resources.Requests.Storage())
	}
	claimOf := func(pod *corev1.Pod) string {
		for _, v := range pod.Spec.Volumes {
			if v.PersistentVolumeClaim != nil {
				return v.PersistentVolumeClaim.ClaimName
			}
		}
		return ""
	}
	if got := claimOf(first.pod(t)); got != pvc.Name {
		t.Fatalf("first Pod mounts claim %q, want %q", got, pvc.Name)
	}
	// What the first backend writes in its volume (the test node keeps a
	// claim as a directory).
	dir := filepath.Join(c.Dir, "volumes", r.cfg.Namespace, pvc.Name)
	if err := os.WriteFile(filepath.Join(dir, "doc"), []byte("kept"), 0o644); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	busy := volSpec()
	if h, err := r.Start(ctx, busy); !errors.Is(err, runtime.ErrVolumeBusy) {
		if err == nil {
			r.Stop(ctx, h, "", 0)
			r.Cleanup(ctx, h)
		}
		t.Fatalf("Start while the first backend has the volume: %v, want ErrVolumeBusy", err)
	}

	if err := r.Stop(ctx, first.h, "", time.Second); err != nil {
		t.Fatal(err)
	}
	first.wait(t)
	second := start(t, r, volSpec())
	second.answer(t)
	if got := claimOf(second.pod(t)); got != pvc.Name {
		t.Errorf("second Pod mounts claim %q, want the key's %q", got, pvc.Name)
	}
	var env map[string]string
	resp, err := http.Get("http://" + second.h.Addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&env); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(env["BERTH_STATE_DIR"], "doc"))
	if err != nil || string(b) != "kept" {
		t.Errorf("the second backend reads %q, %v in BERTH_STATE_DIR %s, want what the first wrote", b, err, env["BERTH_STATE_DIR"])
	}
}

// TestRuntime_Stop_youngPodKeepsItsLogs: a Pod stopped before its log
// stream was first asked for (followDelay after it runs) still has its
// output to the end, even when its node has removed it before Wait: Stop
// opens the stream before it deletes the Pod.
func TestRuntime_Stop_youngPodKeepsItsLogs(t *testing.T) {
	t.Parallel()
	r := newRuntime(t, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	logs := &testbin.SyncBuffer{}
	spec := testSpec(t, testID(), nil)
	spec.Logs = logs
	h, err := r.Start(ctx, spec)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	if err := r.Stop(ctx, h, "SIGINT", 20*time.Second); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	st, _ := handleState(h)
	for {
		_, err := r.cs.CoreV1().Pods(st.Namespace).Get(ctx, st.Pod, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the Pod was not removed after its stop: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := r.Wait(ctx, h); err != nil {
		t.Fatalf("Wait: %v", err)
	}
	if out := logs.String(); !strings.Contains(out, "got SIGINT") {
		t.Errorf("logs = %q, want them to end with the backend's \"got SIGINT\"", out)
	}
}
