package kubernetes

import (
	"context"
	"io"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// follower copies one Pod's log stream (from the container's start) into
// a writer, until the stream ends (the container exited), Cleanup, or Close.
type follower struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// drainWait bounds how long Wait lets a follower catch up with the end of
// the stream once the Pod ended.
const drainWait = 2 * time.Second

// drain waits until the stream ended, or drainWait, or ctx. f may be nil.
func (f *follower) drain(ctx context.Context) {
	if f == nil {
		return
	}
	select {
	case <-f.done:
	case <-time.After(drainWait):
	case <-ctx.Done():
	}
}

// follow starts copying pod's logs into w, replacing an earlier follower.
func (r *Runtime) follow(pod string, w io.Writer) {
	ctx, cancel := context.WithCancel(r.ctx)
	f := &follower{cancel: cancel, done: make(chan struct{})}
	r.mu.Lock()
	old := r.follows[pod]
	r.follows[pod] = f
	r.mu.Unlock()
	if old != nil {
		old.cancel()
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer close(f.done)
		r.copyLogs(ctx, pod, w)
	}()
}

// copyLogs streams the logs, retrying while the container has not started
// (the kubelet answers 400 until it has) with a growing pause, for about
// half a minute: a node without a kubelet API (kwok) never answers.
func (r *Runtime) copyLogs(ctx context.Context, pod string, w io.Writer) {
	pause := 50 * time.Millisecond
	for waited := time.Duration(0); ; waited += pause {
		req := r.cs.CoreV1().Pods(r.cfg.Namespace).GetLogs(pod, &corev1.PodLogOptions{Container: containerName, Follow: true})
		rc, err := req.Stream(ctx)
		if err == nil {
			_, err = io.Copy(w, rc)
			rc.Close()
			if err != nil && ctx.Err() == nil {
				r.log.Debug("log stream ended", "pod", pod, "err", err)
			}
			return
		}
		if ctx.Err() != nil || waited > 30*time.Second {
			r.log.Debug("no log stream", "pod", pod, "err", err)
			return
		}
		pause = min(2*pause, 2*time.Second)
		select {
		case <-ctx.Done():
			return
		case <-time.After(pause):
		}
	}
}

func (r *Runtime) unfollow(pod string) {
	r.mu.Lock()
	f := r.follows[pod]
	delete(r.follows, pod)
	r.mu.Unlock()
	if f != nil {
		f.cancel()
	}
}
