package kubernetes

import (
	"context"
	"io"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// follower copies one Pod's log stream (from the container's start) into
// a writer, until the stream ends (the container exited), Cleanup, or Close.
type follower struct {
	cancel  context.CancelFunc
	done    chan struct{}
	ended   chan struct{} // closed by drain: the Pod ended
	endOnce sync.Once
	// hurry, closed by openLogs, has the follower ask at once; asked is
	// closed once it has a stream or, after hurry, one more request found
	// none.
	hurry, asked         chan struct{}
	hurryOnce, askedOnce sync.Once
}

// followDelay is how long after the Pod runs its log stream is first asked
// for. The kubelet keeps a container's output from its start, so a later
// first request loses nothing. One at the moment the Pod runs reaches the
// API server (which proxies it to the kubelet) while the start keeps it
// busiest, and delayed the readiness probe and the first request behind
// it: by 0.5–0.9 ms of a 12 ms cold start on kwok (BENCHMARKS.md).
const followDelay = 100 * time.Millisecond

// drainWait bounds how long Wait lets a follower catch up with the end of
// the stream once the Pod ended.
const drainWait = 2 * time.Second

// drain tells f the Pod ended and waits until its stream ended, or
// drainWait, or ctx. A follower that has no stream yet asks once more at
// once (a container that ended quickly still has its output on the
// kubelet) and then gives up. f may be nil.
func (f *follower) drain(ctx context.Context) {
	if f == nil {
		return
	}
	f.endOnce.Do(func() { close(f.ended) })
	select {
	case <-f.done:
	case <-time.After(drainWait):
	case <-ctx.Done():
	}
}

// openLogs has pod's follower ask for the stream now, if it has none yet,
// and waits until it has one, found none, or drainWait passed. Stop calls
// it before deleting the Pod: once the node has removed a deleted Pod, its
// output can no longer be read, and a Pod stopped within followDelay of
// running would take the output of its last moments with it.
func (r *Runtime) openLogs(ctx context.Context, pod string) {
	r.mu.Lock()
	f := r.follows[pod]
	r.mu.Unlock()
	if f == nil {
		return
	}
	f.hurryOnce.Do(func() { close(f.hurry) })
	select {
	case <-f.asked:
	case <-f.done:
	case <-time.After(drainWait):
	case <-ctx.Done():
	}
}

// follow starts copying pod's logs into w, replacing an earlier follower.
func (r *Runtime) follow(pod string, w io.Writer) {
	ctx, cancel := context.WithCancel(r.ctx)
	f := &follower{cancel: cancel, done: make(chan struct{}), ended: make(chan struct{}),
		hurry: make(chan struct{}), asked: make(chan struct{})}
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
		r.copyLogs(ctx, f, pod, w)
	}()
}

// copyLogs streams the logs, first after followDelay (or at once when
// hurried), then retrying while the container has not started (the
// kubelet answers 400 until it has) with a growing pause, for about half a
// minute: a node without a kubelet API (kwok) never answers. It stops
// asking once the Pod is gone, or has ended and one more request found no
// stream.
func (r *Runtime) copyLogs(ctx context.Context, f *follower, pod string, w io.Writer) {
	pause, retry := followDelay, 50*time.Millisecond
	t := time.NewTimer(pause)
	defer t.Stop()
	hurry := f.hurry
	for waited := time.Duration(0); ; waited += pause {
		select {
		case <-ctx.Done():
			return
		case <-f.ended:
		case <-hurry:
			hurry = nil // once: later attempts keep their pause
		case <-t.C:
		}
		hurried := isClosed(f.hurry)
		req := r.cs.CoreV1().Pods(r.cfg.Namespace).GetLogs(pod, &corev1.PodLogOptions{Container: containerName, Follow: true})
		rc, err := req.Stream(ctx)
		if err == nil || hurried {
			f.askedOnce.Do(func() { close(f.asked) })
		}
		if err == nil {
			_, err = io.Copy(w, rc)
			rc.Close()
			if err != nil && ctx.Err() == nil {
				r.log.Debug("log stream ended", "pod", pod, "err", err)
			}
			return
		}
		select {
		case <-f.ended:
			r.log.Debug("no log stream; the Pod ended", "pod", pod, "err", err)
			return
		default:
		}
		if ctx.Err() != nil || apierrors.IsNotFound(err) || waited > 30*time.Second {
			r.log.Debug("no log stream", "pod", pod, "err", err)
			return
		}
		retry = min(2*retry, 2*time.Second)
		pause = retry
		t.Reset(pause)
	}
}

// isClosed reports whether c is closed.
func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
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
