package kubernetes

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/runtime"
)

// deleteTimeout bounds the removal of a Pod whose Start failed, which runs
// even when Start's context is done.
const deleteTimeout = 30 * time.Second

// state is what Handle.State holds.
type state struct {
	Namespace string    `json:"namespace"`
	Pod       string    `json:"pod"`
	UID       types.UID `json:"uid"`
}

// pullFailures are the container waiting reasons that mean the image will
// not run: Start fails with Kubernetes' message rather than wait.
var pullFailures = map[string]bool{
	"ErrImagePull": true, "ImagePullBackOff": true, "InvalidImageName": true, "ErrImageNeverPull": true,
	"CreateContainerConfigError": true, "CreateContainerError": true, "RunContainerError": true,
}

// Start creates the backend's Pod (and, for mode volume, its key's claim)
// and returns once the Pod runs with an IP, or has already ended.
func (r *Runtime) Start(ctx context.Context, spec runtime.Spec) (*runtime.Handle, error) {
	id := spec.BackendID
	name, err := podName(id)
	if err != nil {
		return nil, fmt.Errorf("kubernetes: start: %w", err)
	}
	if spec.Spawn.Image == "" {
		return nil, fmt.Errorf("kubernetes: start %s: the spawn has no image", id)
	}
	if spec.StateDir != "" && spec.VolumeLock == "" {
		return nil, fmt.Errorf("kubernetes: start %s: state mode dir needs the backend API's URL (--kube-backend-api-url): a Pod keeps its directory through it, as a directory on Berth's host cannot be mounted into a Pod", id)
	}
	if spec.Spawn.StateMode() == berth.StateModeDir {
		switch {
		case r.cfg.StateImage == "":
			return nil, fmt.Errorf("kubernetes: start %s: state mode dir needs the image that runs berth state-sync in the Pod (--kube-state-image)", id)
		case spec.Env["BERTH_STATE_URL"] == "":
			return nil, fmt.Errorf("kubernetes: start %s: state mode dir needs the backend API's URL (--kube-backend-api-url)", id)
		}
	}
	claim := ""
	if spec.VolumeLock != "" {
		if claim, err = r.claim(ctx, spec.Key); err != nil {
			return nil, fmt.Errorf("kubernetes: start %s: %w", id, err)
		}
	}
	pod, port, err := r.podFor(name, spec, claim)
	if err != nil {
		return nil, fmt.Errorf("kubernetes: start %s: %w", id, err)
	}
	created, err := r.cs.CoreV1().Pods(r.cfg.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		if !apierrors.IsAlreadyExists(err) {
			r.deletePod(name, "", 0) // the API server may have made it although we never heard back
		}
		return nil, fmt.Errorf("kubernetes: start %s: create Pod: %w", id, err)
	}
	timeout := spec.Spawn.StartupTimeout()
	running, err := r.awaitRunning(ctx, created, timeout)
	if err != nil {
		r.deletePod(name, created.UID, 0)
		return nil, fmt.Errorf("kubernetes: start %s: %w", id, err)
	}
	st, _ := json.Marshal(state{Namespace: r.cfg.Namespace, Pod: name, UID: created.UID})
	h := &runtime.Handle{BackendID: id, Runtime: Name, State: st}
	if running.Status.PodIP != "" {
		h.Addr = net.JoinHostPort(running.Status.PodIP, strconv.Itoa(port))
	}
	if spec.Logs != nil {
		r.follow(name, spec.Logs)
	}
	return h, nil
}

// awaitRunning waits, through the informer, until the Pod runs with an IP or
// has ended, and fails when its image cannot run, it is deleted, or it is
// still pending after timeout.
func (r *Runtime) awaitRunning(ctx context.Context, created *corev1.Pod, timeout time.Duration) (*corev1.Pod, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	seen := false
	for {
		r.mu.Lock()
		changed := r.changed
		r.mu.Unlock()
		pod, err := r.pods.Get(created.Name)
		switch {
		case err == nil && pod.UID == created.UID:
			seen = true
			if _, ended := podExit(pod); ended || (pod.Status.Phase == corev1.PodRunning && pod.Status.PodIP != "") {
				return pod, nil
			}
			if why := startFailure(pod); why != "" {
				return nil, errors.New(why)
			}
		case seen:
			return nil, errors.New("the Pod was deleted before it ran")
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-deadline.C:
			why := "it was not scheduled"
			if pod != nil {
				why = pendingReason(pod)
			}
			return nil, fmt.Errorf("the Pod did not run within the startup timeout (%s): %s", timeout, why)
		}
	}
}

// startFailure returns Kubernetes' reason and message when the Pod's
// container cannot start, else "".
func startFailure(pod *corev1.Pod) string {
	for _, cs := range slices.Concat(pod.Status.InitContainerStatuses, pod.Status.ContainerStatuses) {
		if w := cs.State.Waiting; w != nil && pullFailures[w.Reason] {
			return fmt.Sprintf("%s: %s: %s", cs.Name, w.Reason, w.Message)
		}
	}
	return ""
}

// pendingReason says why a Pod has not run yet, from its conditions.
func pendingReason(pod *corev1.Pod) string {
	for _, c := range pod.Status.Conditions {
		if c.Status != corev1.ConditionTrue && c.Message != "" {
			return fmt.Sprintf("%s: %s", c.Reason, c.Message)
		}
	}
	for _, cs := range pod.Status.ContainerStatuses {
		if w := cs.State.Waiting; w != nil {
			return fmt.Sprintf("%s: %s", w.Reason, w.Message)
		}
	}
	if pod.Spec.NodeName == "" {
		return "it was not scheduled"
	}
	return "phase " + string(pod.Status.Phase)
}

// podFor builds the backend's Pod, and returns it with the port it listens
// on.
func (r *Runtime) podFor(name string, spec runtime.Spec, claim string) (*corev1.Pod, int, error) {
	sp := spec.Spawn
	port := spec.Port
	if port <= 0 {
		port = r.cfg.Port
	}
	if port > 65535 {
		return nil, 0, fmt.Errorf("port %d is not a TCP port", port)
	}
	env := maps.Clone(spec.Env)
	if env == nil {
		env = map[string]string{}
	}
	env["PORT"] = strconv.Itoa(port)
	if claim != "" {
		env["BERTH_STATE_DIR"] = stateMount
	}
	dirMode := sp.StateMode() == berth.StateModeDir
	var syncEnv []corev1.EnvVar
	if dirMode {
		// The backend only sees its directory; the state URL is the
		// sync containers'.
		env["BERTH_STATE_DIR"] = stateMount
		syncEnv = []corev1.EnvVar{
			{Name: "BERTH_STATE_URL", Value: env["BERTH_STATE_URL"]},
			{Name: "BERTH_SECRET", Value: env["BERTH_SECRET"]},
			{Name: "BERTH_STATE_DIR", Value: stateMount},
			{Name: "BERTH_SAVE_INTERVAL", Value: strconv.Itoa(int(sp.SaveInterval().Seconds()))},
		}
		delete(env, "BERTH_STATE_URL")
	}
	var envVars []corev1.EnvVar
	for _, k := range slices.Sorted(maps.Keys(env)) {
		envVars = append(envVars, corev1.EnvVar{Name: k, Value: env[k]})
	}
	mem, cpu := sp.Resources.MemoryMB, sp.Resources.CPUMillis
	if mem == 0 {
		mem = r.cfg.MemoryMB
	}
	if cpu == 0 {
		cpu = r.cfg.CPUMillis
	}
	res := corev1.ResourceList{
		corev1.ResourceCPU:    *resource.NewMilliQuantity(int64(cpu), resource.DecimalSI),
		corev1.ResourceMemory: *resource.NewQuantity(int64(mem)<<20, resource.BinarySI),
	}
	uid := r.cfg.RunAsUser
	ctr := corev1.Container{
		Name:            containerName,
		Image:           sp.Image,
		Env:             envVars,
		Ports:           []corev1.ContainerPort{{Name: "http", ContainerPort: int32(port), Protocol: corev1.ProtocolTCP}},
		Resources:       corev1.ResourceRequirements{Requests: res, Limits: res},
		ImagePullPolicy: pullPolicy(sp.PullPolicy),
		SecurityContext: &corev1.SecurityContext{
			RunAsNonRoot:             new(true),
			RunAsUser:                &uid,
			RunAsGroup:               &uid,
			AllowPrivilegeEscalation: new(false),
			Privileged:               new(false),
			ReadOnlyRootFilesystem:   new(sp.ReadOnlyRootFS),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
	if len(sp.Command) > 0 {
		args := berth.ExpandArgs(sp.Command, env)
		ctr.Command, ctr.Args = args[:1], args[1:]
	}
	grace := int64(math.Ceil(sp.Grace().Seconds()))
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:      name,
			Namespace: r.cfg.Namespace,
			Labels: map[string]string{
				LabelManaged:  "true",
				LabelInstance: r.cfg.Instance,
				LabelBackend:  spec.BackendID,
				LabelKeyHash:  keyHash(spec.Key),
			},
			Annotations: map[string]string{AnnotationKey: spec.Key},
		},
		Spec: corev1.PodSpec{
			Containers:                    []corev1.Container{ctr},
			RestartPolicy:                 corev1.RestartPolicyNever,
			TerminationGracePeriodSeconds: &grace,
			AutomountServiceAccountToken:  new(false),
			EnableServiceLinks:            new(false),
			NodeSelector:                  r.cfg.NodeSelector,
			Tolerations:                   r.cfg.Tolerations,
			SecurityContext: &corev1.PodSecurityContext{
				RunAsNonRoot:   new(true),
				RunAsUser:      &uid,
				RunAsGroup:     &uid,
				FSGroup:        &uid,
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
		},
	}
	for _, s := range r.cfg.ImagePullSecrets {
		pod.Spec.ImagePullSecrets = append(pod.Spec.ImagePullSecrets, corev1.LocalObjectReference{Name: s})
	}
	if sp.StopSignal != "" {
		pod.Annotations[AnnotationStopSignal] = strings.ToUpper(sp.StopSignal)
	}
	if sp.ReadOnlyRootFS {
		pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{Name: "tmp", VolumeSource: corev1.VolumeSource{
			EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory, SizeLimit: new(resource.MustParse("64Mi"))}}})
		pod.Spec.Containers[0].VolumeMounts = append(pod.Spec.Containers[0].VolumeMounts, corev1.VolumeMount{Name: "tmp", MountPath: "/tmp"})
	}
	if dirMode {
		pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{Name: "state", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}})
		mount := []corev1.VolumeMount{{Name: "state", MountPath: stateMount}}
		pod.Spec.Containers[0].VolumeMounts = append(pod.Spec.Containers[0].VolumeMounts, mount...)
		small := corev1.ResourceList{
			corev1.ResourceCPU:    *resource.NewMilliQuantity(100, resource.DecimalSI),
			corev1.ResourceMemory: *resource.NewQuantity(64<<20, resource.BinarySI),
		}
		sync := func(name, verb string) corev1.Container {
			c := corev1.Container{
				Name:                     name,
				Image:                    r.cfg.StateImage,
				Args:                     []string{"state-sync", verb},
				Env:                      syncEnv,
				VolumeMounts:             mount,
				Resources:                corev1.ResourceRequirements{Requests: small, Limits: small},
				ImagePullPolicy:          corev1.PullIfNotPresent,
				SecurityContext:          ctr.SecurityContext.DeepCopy(),
				TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
			}
			c.SecurityContext.ReadOnlyRootFilesystem = new(true)
			return c
		}
		sidecar := sync(syncName, "run")
		sidecar.RestartPolicy = new(corev1.ContainerRestartPolicyAlways)
		pod.Spec.InitContainers = []corev1.Container{sync(restoreName, "restore"), sidecar}
	}
	if claim != "" {
		pod.Labels[LabelVolume] = claim
		pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{Name: "state", VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim}}})
		pod.Spec.Containers[0].VolumeMounts = append(pod.Spec.Containers[0].VolumeMounts, corev1.VolumeMount{Name: "state", MountPath: stateMount})
	}
	return pod, port, nil
}

func pullPolicy(p string) corev1.PullPolicy {
	switch p {
	case "always":
		return corev1.PullAlways
	case "never":
		return corev1.PullNever
	}
	return corev1.PullIfNotPresent
}

// podExit reports how the Pod ended, and false while it has not.
func podExit(pod *corev1.Pod) (runtime.Exit, bool) {
	if pod.Status.Reason == "Evicted" || pod.Status.Reason == "NodeLost" || pod.Status.Reason == "Terminated" && pod.Status.Phase == corev1.PodFailed {
		e := runtime.Exit{Code: -1, At: time.Now(), Err: fmt.Errorf("%w: %s: %s", runtime.ErrLost, pod.Status.Reason, pod.Status.Message)}
		if t := terminated(pod); t != nil {
			e.At = t.FinishedAt.Time
		}
		return e, true
	}
	ended := pod.Status.Phase == corev1.PodFailed || pod.Status.Phase == corev1.PodSucceeded
	if t := terminated(pod); t != nil && (ended || !syncing(pod)) {
		return runtime.Exit{Code: int(t.ExitCode), OOMKilled: t.Reason == "OOMKilled", At: t.FinishedAt.Time}, true
	}
	for _, cs := range pod.Status.InitContainerStatuses {
		if t := cs.State.Terminated; ended && cs.Name == restoreName && t != nil && t.ExitCode != 0 {
			return runtime.Exit{Code: -1, At: t.FinishedAt.Time, Err: fmt.Errorf("the state directory could not be restored (%s exited with %d): %s", restoreName, t.ExitCode, t.Message)}, true
		}
	}
	if pod.Status.Phase == corev1.PodFailed || pod.Status.Phase == corev1.PodSucceeded {
		return runtime.Exit{Code: -1, At: time.Now(), Err: fmt.Errorf("%w: the Pod %s without a container status: %s %s", runtime.ErrLost, strings.ToLower(string(pod.Status.Phase)), pod.Status.Reason, pod.Status.Message)}, true
	}
	return runtime.Exit{}, false
}

// syncing reports whether the Pod's state-sync sidecar may still be
// taking its final save: the Pod has ended only once it has.
func syncing(pod *corev1.Pod) bool {
	if !slices.ContainsFunc(pod.Spec.InitContainers, func(c corev1.Container) bool { return c.Name == syncName }) {
		return false
	}
	for _, cs := range pod.Status.InitContainerStatuses {
		if cs.Name == syncName && cs.State.Terminated != nil {
			return false
		}
	}
	return true
}

func terminated(pod *corev1.Pod) *corev1.ContainerStateTerminated {
	for _, cs := range pod.Status.ContainerStatuses {
		if cs.Name == containerName && cs.State.Terminated != nil {
			return cs.State.Terminated
		}
	}
	return nil
}

func handleState(h *runtime.Handle) (state, error) {
	var st state
	if err := json.Unmarshal(h.State, &st); err != nil || st.Pod == "" {
		return st, fmt.Errorf("kubernetes: handle of %s: no Pod in its state %q", h.BackendID, h.State)
	}
	return st, nil
}

// Wait blocks until the Pod ended (or was deleted) and reports how; a Pod
// this Runtime never saw end and that is gone is runtime.ErrGone.
func (r *Runtime) Wait(ctx context.Context, h *runtime.Handle) (runtime.Exit, error) {
	st, err := handleState(h)
	if err != nil {
		return runtime.Exit{Code: -1, Err: err}, err
	}
	for {
		r.mu.Lock()
		changed := r.changed
		e, seen := r.exits[st.Pod]
		f := r.follows[st.Pod]
		r.mu.Unlock()
		pod, err := r.pods.Get(st.Pod)
		if err == nil && pod.UID == st.UID {
			if e, ok := podExit(pod); ok {
				f.drain(ctx)
				return e, nil
			}
		} else if seen {
			f.drain(ctx)
			return e, nil
		} else {
			return runtime.Exit{Code: -1, Err: runtime.ErrGone}, runtime.ErrGone
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return runtime.Exit{Code: -1, Err: ctx.Err()}, ctx.Err()
		}
	}
}

// Stop deletes the Pod with the grace period (at least a second; see the
// package doc) and waits until its container ended or it is gone. A Pod
// that already ended is left as it is, for Wait and Cleanup.
func (r *Runtime) Stop(ctx context.Context, h *runtime.Handle, signal string, grace time.Duration) error {
	st, err := handleState(h)
	if err != nil {
		return err
	}
	pods := r.cs.CoreV1().Pods(st.Namespace)
	pod, err := pods.Get(ctx, st.Pod, metav1.GetOptions{})
	if apierrors.IsNotFound(err) || err == nil && pod.UID != st.UID {
		return nil
	}
	if err != nil {
		return fmt.Errorf("kubernetes: stop %s: %w", h.BackendID, err)
	}
	if _, ended := podExit(pod); ended {
		return nil
	}
	if signal != "" && pod.DeletionTimestamp == nil {
		patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{AnnotationStopSignal: strings.ToUpper(signal)}}})
		if _, err := pods.Patch(ctx, st.Pod, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("kubernetes: stop %s: annotate the stop signal: %w", h.BackendID, err)
		}
	}
	r.openLogs(ctx, st.Pod)
	secs := max(int64(math.Ceil(grace.Seconds())), 1)
	err = pods.Delete(ctx, st.Pod, metav1.DeleteOptions{GracePeriodSeconds: &secs, Preconditions: &metav1.Preconditions{UID: &st.UID}})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return fmt.Errorf("kubernetes: stop %s: delete Pod: %w", h.BackendID, err)
	}
	for {
		r.mu.Lock()
		changed := r.changed
		_, seen := r.exits[st.Pod]
		r.mu.Unlock()
		pod, err := r.pods.Get(st.Pod)
		if err != nil || pod.UID != st.UID {
			return nil
		}
		if _, ended := podExit(pod); ended || seen {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("kubernetes: stop %s: the Pod did not end: %w", h.BackendID, ctx.Err())
		}
	}
}

// Recover checks that the Pod runs and follows its logs from its start.
func (r *Runtime) Recover(ctx context.Context, h *runtime.Handle, logs io.Writer) error {
	st, err := handleState(h)
	if err != nil {
		return err
	}
	pod, err := r.cs.CoreV1().Pods(st.Namespace).Get(ctx, st.Pod, metav1.GetOptions{})
	if apierrors.IsNotFound(err) || err == nil && pod.UID != st.UID {
		return runtime.ErrGone
	}
	if err != nil {
		return fmt.Errorf("kubernetes: recover %s: %w", h.BackendID, err)
	}
	if _, ended := podExit(pod); ended {
		return runtime.ErrGone
	}
	if logs != nil {
		r.follow(st.Pod, logs)
	}
	return nil
}

// Cleanup deletes the Pod (the claim of mode volume stays, for the key's
// next backend) and forgets it.
func (r *Runtime) Cleanup(ctx context.Context, h *runtime.Handle) error {
	st, err := handleState(h)
	if err != nil {
		return err
	}
	zero := int64(0)
	err = r.cs.CoreV1().Pods(st.Namespace).Delete(ctx, st.Pod, metav1.DeleteOptions{GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &st.UID}})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return fmt.Errorf("kubernetes: cleanup %s: %w", h.BackendID, err)
	}
	r.unfollow(st.Pod)
	r.mu.Lock()
	delete(r.exits, st.Pod)
	r.mu.Unlock()
	return nil
}

// List returns a handle for every Pod of this Berth in the namespace, asked
// of the API server (not the informer's cache, which may lag a deletion).
func (r *Runtime) List(ctx context.Context) ([]*runtime.Handle, error) {
	sel := labels.SelectorFromSet(labels.Set{LabelManaged: "true", LabelInstance: r.cfg.Instance}).String()
	list, err := r.cs.CoreV1().Pods(r.cfg.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return nil, fmt.Errorf("kubernetes: list Pods: %w", err)
	}
	var hs []*runtime.Handle
	for _, pod := range list.Items {
		id := pod.Labels[LabelBackend]
		if id == "" {
			continue
		}
		st, _ := json.Marshal(state{Namespace: pod.Namespace, Pod: pod.Name, UID: pod.UID})
		h := &runtime.Handle{BackendID: id, Runtime: Name, State: st}
		if pod.Status.PodIP != "" {
			port := r.cfg.Port
			if len(pod.Spec.Containers) > 0 && len(pod.Spec.Containers[0].Ports) > 0 {
				port = int(pod.Spec.Containers[0].Ports[0].ContainerPort)
			}
			h.Addr = net.JoinHostPort(pod.Status.PodIP, strconv.Itoa(port))
		}
		hs = append(hs, h)
	}
	return hs, nil
}

// deletePod removes a Pod at once (uid, when set, guards against deleting
// a newer Pod of the same name), even when the caller's context is done.
func (r *Runtime) deletePod(name string, uid types.UID, grace int64) {
	ctx, cancel := context.WithTimeout(context.Background(), deleteTimeout)
	defer cancel()
	opts := metav1.DeleteOptions{GracePeriodSeconds: &grace}
	if uid != "" {
		opts.Preconditions = &metav1.Preconditions{UID: &uid}
	}
	err := r.cs.CoreV1().Pods(r.cfg.Namespace).Delete(ctx, name, opts)
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		r.log.Warn("delete a Pod whose start failed", "pod", name, "err", err)
	}
}
