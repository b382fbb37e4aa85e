package e2e

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
	"github.com/berthhq/berth/internal/testbin"
	"github.com/berthhq/berth/runtime/kubernetes"
	"github.com/berthhq/berth/runtime/kubernetes/kubetest"
)

const (
	kubeImage = "berth.test/testbackend:1"
	// kubeStateImage runs berth state-sync in the Pods of mode dir.
	kubeStateImage = "berth.test/berth:1"
)

// kubeOpts starts Berth with the kubernetes runtime against the shared
// test cluster, in namespace ns, on a node agent of its own that runs
// kubeImage as the testbackend.
func kubeOpts(t *testing.T, dir string) (opts, *kubetest.Cluster, string) {
	t.Helper()
	c := kubetest.Shared(t)
	ns := c.Namespace(t)
	label := "e2e-" + strings.ToLower(ns)
	node, err := c.NewNode(label, map[string]string{"berth.test/node": label}, map[string]string{kubeImage: bin.testbackend, kubeStateImage: bin.berth})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(node.Close)
	return opts{dataDir: dir, runtime: kubernetes.Name, extra: []string{
		"--kubeconfig", c.Kubeconfig,
		"--kube-namespace", ns,
		"--kube-node-selector", "berth.test/node=" + label,
		// The node agent's Pods share this host's network.
		"--kube-backend-port", "0",
		"--kube-state-image", kubeStateImage,
	}}, c, ns
}

func kubeSpawn() *berth.SpawnConfig {
	return &berth.SpawnConfig{Image: kubeImage, GraceSeconds: ptr(2)}
}

// TestKubernetes_restart: backends run as Pods and answer through the
// proxy; a Berth killed with SIGKILL and started again re-adopts the Pods
// that still run (the same Pod, not a new one), records the backend whose
// Pod went meanwhile as lost, and deletes a Pod of its own that no record
// owns.
func TestKubernetes_restart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	o, c, ns := kubeOpts(t, dir)
	s1 := start(t, o)

	survivor := s1.spawnReady(t, "survivor", kubeSpawn())
	victim := s1.spawnReady(t, "victim", kubeSpawn())
	if resp, body := get(t, survivor.URL, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("GET through the proxy: %d %s", resp.StatusCode, body)
	}
	ctx := context.Background()
	pods := c.Client.CoreV1().Pods(ns)
	podOf := func(id string) *corev1.Pod {
		t.Helper()
		list, err := pods.List(ctx, metav1.ListOptions{LabelSelector: kubernetes.LabelBackend + "=" + id})
		if err != nil || len(list.Items) != 1 {
			t.Fatalf("the Pod of %s: %v, %d Pods", id, err, len(list.Items))
		}
		return &list.Items[0]
	}
	before := podOf(survivor.BackendID)

	s1.kill()
	// The victim's node is lost: its Pod goes without an exit.
	zero := int64(0)
	if err := pods.Delete(ctx, podOf(victim.BackendID).Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	// A Pod of this Berth that no record owns (as left by a start whose
	// record was lost).
	orphan := before.DeepCopy()
	orphan.ObjectMeta = metav1.ObjectMeta{Name: "berth-bk-orphan", Labels: map[string]string{
		kubernetes.LabelManaged: "true", kubernetes.LabelInstance: before.Labels[kubernetes.LabelInstance], kubernetes.LabelBackend: "bk_orphan",
	}}
	orphan.Spec.NodeName, orphan.Status = "", corev1.PodStatus{}
	if _, err := pods.Create(ctx, orphan, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	s2 := start(t, o)
	if b := s2.backend(t, survivor.BackendID); b.State != berth.StateReady {
		t.Errorf("survivor is %q (reason %q) after the restart, want ready", b.State, b.Reason)
	}
	cr := s2.connect(t, api.ConnectRequest{Key: "survivor", Spawn: kubeSpawn(), Wait: true})
	if cr.Spawned || cr.BackendID != survivor.BackendID {
		t.Errorf("connect after the restart: backend %s spawned %v, want the re-adopted %s", cr.BackendID, cr.Spawned, survivor.BackendID)
	}
	if resp, body := get(t, cr.URL, nil); resp.StatusCode != http.StatusOK {
		t.Errorf("GET the re-adopted backend: %d %s", resp.StatusCode, body)
	}
	if after := podOf(survivor.BackendID); after.UID != before.UID {
		t.Errorf("the survivor's Pod is %s, want the same %s as before (re-adopted, not restarted)", after.UID, before.UID)
	}
	if b := s2.waitTerminated(t, victim.BackendID, 20*time.Second); b.Reason != berth.ReasonLost {
		t.Errorf("victim: reason %q, want lost", b.Reason)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := pods.Get(ctx, orphan.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the orphan Pod is still there 30s after the restart: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestKubernetes_spawnFailed: an image the node cannot pull ends the spawn
// spawn_failed, with Kubernetes' reason in the message.
func TestKubernetes_spawnFailed(t *testing.T) {
	t.Parallel()
	o, _, _ := kubeOpts(t, t.TempDir())
	s := start(t, o)
	e := s.connectFailed(t, api.ConnectRequest{Key: "nopull", Spawn: &berth.SpawnConfig{Image: "registry.invalid/nothing:here"}, Wait: true, WaitTimeoutSeconds: 30})
	if e.Reason != berth.ReasonSpawnFailed {
		t.Errorf("error %+v, want reason spawn_failed", e)
	}
	var msgs []string
	for _, ev := range s.history(t, e.BackendID) {
		msgs = append(msgs, ev.Message)
	}
	if !strings.Contains(strings.Join(msgs, "\n"), "ErrImagePull") {
		t.Errorf("history messages %q, want Kubernetes' ErrImagePull and its message", msgs)
	}
}

// TestKubernetes_stateBlob: a Pod's BERTH_STATE_URL names the backend API at
// --kube-backend-api-url (in a cluster, the Service in front of Berth); what
// a backend saves there is what the key's next backend loads.
func TestKubernetes_stateBlob(t *testing.T) {
	t.Parallel()
	o, _, _ := kubeOpts(t, t.TempDir())
	o.backendAPI = testbin.FreeAddr(t)
	o.extra = append(o.extra, "--kube-backend-api-url", "http://"+o.backendAPI)
	s := start(t, o)
	spawn := kubeSpawn()
	spawn.State = berth.StateConfig{Mode: berth.StateModeBlob}

	first := s.spawnReady(t, "doc", spawn)
	st := stateOf(t, first.URL)
	if !strings.HasPrefix(st.url, "http://"+o.backendAPI+"/") {
		t.Fatalf("BERTH_STATE_URL %s, want it under --kube-backend-api-url http://%s", st.url, o.backendAPI)
	}
	if code, body := stateReq(t, http.MethodPut, st.url, st.secret, strings.NewReader("saved by the first Pod"), -1); code != http.StatusOK && code != http.StatusNoContent {
		t.Fatalf("PUT state: %d %s", code, body)
	}
	s.terminate(t, first.BackendID, false)
	s.waitTerminated(t, first.BackendID, 30*time.Second)

	second := s.spawnReady(t, "doc", spawn)
	if second.BackendID == first.BackendID {
		t.Fatal("the key's second connect got the terminated backend")
	}
	st2 := stateOf(t, second.URL)
	if code, body := stateReq(t, http.MethodGet, st2.url, st2.secret, nil, 0); code != http.StatusOK || string(body) != "saved by the first Pod" {
		t.Errorf("GET state from the second Pod: %d %q, want what the first saved", code, body)
	}
}

// TestKubernetes_stateVolume: state mode volume is the key's
// PersistentVolumeClaim, which the key's next Pod mounts again.
func TestKubernetes_stateVolume(t *testing.T) {
	t.Parallel()
	o, c, ns := kubeOpts(t, t.TempDir())
	s := start(t, o)
	spawn := kubeSpawn()
	spawn.State = berth.StateConfig{Mode: berth.StateModeVolume}

	first := s.spawnReady(t, "vol", spawn)
	if _, err := c.Client.CoreV1().PersistentVolumeClaims(ns).Get(context.Background(), kubernetes.ClaimName("vol"), metav1.GetOptions{}); err != nil {
		t.Fatalf("the key's claim: %v", err)
	}
	// The test node keeps a claim as a directory, and names it in
	// BERTH_STATE_DIR instead of the mount path.
	dir := tbEnv(t, first.URL)["BERTH_STATE_DIR"]
	if !strings.Contains(dir, kubernetes.ClaimName("vol")) {
		t.Fatalf("BERTH_STATE_DIR %q is not the key's claim %s", dir, kubernetes.ClaimName("vol"))
	}
	if err := os.WriteFile(filepath.Join(dir, "doc"), []byte("kept"), 0o644); err != nil {
		t.Fatal(err)
	}
	s.terminate(t, first.BackendID, false)
	s.waitTerminated(t, first.BackendID, 30*time.Second)

	second := s.spawnReady(t, "vol", spawn)
	dir2 := tbEnv(t, second.URL)["BERTH_STATE_DIR"]
	if b, err := os.ReadFile(filepath.Join(dir2, "doc")); err != nil || string(b) != "kept" {
		t.Errorf("the second Pod reads %q, %v in %s, want what the first wrote", b, err, dir2)
	}
}

// TestKubernetes_stateDir: in state mode dir a Pod's directory is an
// emptyDir that an init container restores from the backend API and a
// sidecar saves, once more after the backend's container ended (the save
// interval is an hour: only that final save can carry the file); the
// key's next Pod finds it, and a save with the first backend's
// credentials, now stale, is refused and changes nothing.
func TestKubernetes_stateDir(t *testing.T) {
	t.Parallel()
	o, c, ns := kubeOpts(t, t.TempDir())
	o.backendAPI = testbin.FreeAddr(t)
	o.extra = append(o.extra, "--kube-backend-api-url", "http://"+o.backendAPI)
	s := start(t, o)
	spawn := kubeSpawn()
	spawn.State = berth.StateConfig{Mode: berth.StateModeDir, SaveIntervalSeconds: 3600}

	first := s.spawnReady(t, "dir", spawn)
	pod, err := c.Client.CoreV1().Pods(ns).Get(context.Background(), "berth-"+strings.ReplaceAll(strings.ToLower(first.BackendID), "_", "-"), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(pod.Spec.InitContainers); n != 2 || pod.Spec.InitContainers[1].RestartPolicy == nil || *pod.Spec.InitContainers[1].RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Fatalf("the Pod's init containers %+v: want a restore and a native sidecar", pod.Spec.InitContainers)
	}
	env := tbEnv(t, first.URL)
	dir := env["BERTH_STATE_DIR"]
	if dir == "" || env["BERTH_STATE_URL"] != "" {
		t.Fatalf("the backend's BERTH_STATE_DIR %q, BERTH_STATE_URL %q: want a directory and no URL", dir, env["BERTH_STATE_URL"])
	}
	if err := os.MkdirAll(filepath.Join(dir, "sub"), 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "sub", "doc"), []byte("kept by the first Pod"), 0o644); err != nil {
		t.Fatal(err)
	}
	s.terminate(t, first.BackendID, false)
	if end := s.waitTerminated(t, first.BackendID, 30*time.Second); end.Reason != berth.ReasonRequested {
		t.Errorf("the first backend ended %s, want requested", end.Reason)
	}

	second := s.spawnReady(t, "dir", spawn)
	dir2 := tbEnv(t, second.URL)["BERTH_STATE_DIR"]
	if dir2 == dir {
		t.Fatalf("the second Pod got the first's directory %s", dir)
	}
	if b, err := os.ReadFile(filepath.Join(dir2, "sub", "doc")); err != nil || string(b) != "kept by the first Pod" {
		t.Fatalf("the second Pod reads %q, %v in %s, want what the first wrote", b, err, dir2)
	}

	// The first backend's save, now stale, is refused.
	stale := "http://" + o.backendAPI + "/v1/backends/" + first.BackendID + "/state"
	if code, body := stateReq(t, http.MethodPut, stale, env["BERTH_SECRET"], strings.NewReader("stale"), -1); code != http.StatusConflict {
		t.Errorf("PUT by the stale holder: %d %s, want 409", code, body)
	}
	if got := s.savedData(t, "dir"); len(got) < 2 || got[0] != 0x1f || got[1] != 0x8b {
		t.Errorf("the key's saved state starts %x after the stale save; want the first Pod's archive (gzip)", got[:min(len(got), 4)])
	}
}

// TestKubernetes_runtimeChoice: on a server that runs only kubernetes, a
// spawn naming it runs as a Pod; what kubernetes cannot do is refused
// before anything is recorded: freezing (400 on spawn.idle_action), a
// command alone (spawn.command) and the process runtime by name
// (spawn.runtime, saying what the server runs).
func TestKubernetes_runtimeChoice(t *testing.T) {
	t.Parallel()
	o, _, _ := kubeOpts(t, t.TempDir())
	s := start(t, o)
	sc := kubeSpawn()
	sc.Runtime = kubernetes.Name
	c := s.spawnReady(t, "named", sc)
	if b := s.backend(t, c.BackendID); b.Runtime != kubernetes.Name {
		t.Fatalf("runtime %q, want kubernetes", b.Runtime)
	}
	for _, tt := range []struct {
		name         string
		spawn        *berth.SpawnConfig
		field, words string
	}{
		{"freeze", &berth.SpawnConfig{Image: kubeImage, IdleAction: berth.IdleFreeze}, "spawn.idle_action", "the kubernetes runtime cannot freeze"},
		{"command alone", &berth.SpawnConfig{Command: []string{bin.testbackend}}, "spawn.command", "this server runs kubernetes"},
		{"process named", &berth.SpawnConfig{Command: []string{bin.testbackend}, Runtime: "process"}, "spawn.runtime", "this server runs kubernetes"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := s.do(t, http.MethodPost, "/v1/connect", connectJSON(t, api.ConnectRequest{Key: "refused", Spawn: tt.spawn}))
			if resp.StatusCode != http.StatusBadRequest {
				t.Fatalf("status %d, want 400; body %s", resp.StatusCode, body)
			}
			if e := apiError(t, body); e.Field != tt.field || !strings.Contains(e.Message, tt.words) {
				t.Errorf("error %+v; want one on %s saying %q", e, tt.field, tt.words)
			}
		})
	}
}
