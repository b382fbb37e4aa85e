package kubernetes

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/runtime"
	"github.com/berthhq/berth/runtime/kubernetes/kubetest"
)

var kwokLabels = map[string]string{"berth.test/node": "kwok"}

var kwokEnv struct {
	once sync.Once
	node *kubetest.KwokNode
	port int // where the stand-in for every kwok Pod's backend answers
	err  error
}

// kwokNode returns the shared kwok node, and the port on which one HTTP
// server (listening on every address, so on each Pod's loopback IP from
// kubetest.KwokPodCIDR) answers for all its Pods: nothing runs in them.
func kwokNode(t testing.TB) (*kubetest.KwokNode, int) {
	t.Helper()
	c, _, _ := cluster(t)
	kwokEnv.once.Do(func() {
		ln, err := net.Listen("tcp", ":0")
		if err != nil {
			kwokEnv.err = err
			return
		}
		go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) }))
		kwokEnv.port = ln.Addr().(*net.TCPAddr).Port
		kwokEnv.node, kwokEnv.err = c.NewKwokNode("kwok", kwokLabels)
	})
	if kwokEnv.err != nil {
		t.Fatal(kwokEnv.err)
	}
	return kwokEnv.node, kwokEnv.port
}

func kwokRuntime(t testing.TB) (*Runtime, int) {
	t.Helper()
	_, port := kwokNode(t)
	tt, ok := t.(*testing.T)
	var r *Runtime
	if ok {
		r = newRuntime(tt, Config{NodeSelector: kwokLabels, Port: port})
	} else {
		c, _, ns := cluster(t)
		var err error
		r, err = New(context.Background(), Config{REST: c.Config, Namespace: ns, Instance: "bench", NodeSelector: kwokLabels, Port: port})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Close() })
	}
	return r, port
}

func kwokSpec(id string, port int) runtime.Spec {
	return runtime.Spec{BackendID: id, Key: "key-" + id, Spawn: berth.SpawnConfig{Image: "berth.test/nothing:1"},
		Env: map[string]string{"PORT": strconv.Itoa(port)}, Port: port}
}

// TestRuntime_kwok drives Pods through kwok's stages: Running with an IP
// from the node's podCIDR, then ended by an exit the test sets (an OOM
// kill, an exit code) or by Stop.
func TestRuntime_kwok(t *testing.T) {
	t.Parallel()
	r, port := kwokRuntime(t)
	tests := []struct {
		name, code, reason string
		want               runtime.Exit
	}{
		{"OOMKilled", "137", "OOMKilled", runtime.Exit{Code: 137, OOMKilled: true}},
		{"exit 3", "3", "Error", runtime.Exit{Code: 3}},
		{"stopped", "", "", runtime.Exit{Code: 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := start(t, r, kwokSpec(testID(), port))
			host, _, _ := net.SplitHostPort(s.h.Addr)
			if ip, err := netip.ParseAddr(host); err != nil || !netip.MustParsePrefix(kubetest.KwokPodCIDR).Contains(ip) {
				t.Fatalf("Handle.Addr %s, want an IP of the kwok node's podCIDR %s", s.h.Addr, kubetest.KwokPodCIDR)
			}
			s.answer(t)
			st, _ := handleState(s.h)
			if tt.code != "" {
				patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{
					kubetest.ExitCodeAnnotation: tt.code, kubetest.ExitReasonAnnotation: tt.reason}}})
				if _, err := r.cs.CoreV1().Pods(st.Namespace).Patch(context.Background(), st.Pod, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
					t.Fatal(err)
				}
			} else {
				ctx, cancel := context.WithTimeout(context.Background(), patience)
				defer cancel()
				if err := r.Stop(ctx, s.h, "", 5*time.Second); err != nil {
					t.Fatal(err)
				}
			}
			if e := s.wait(t); e.Code != tt.want.Code || e.OOMKilled != tt.want.OOMKilled || e.Err != nil {
				t.Errorf("Wait = %+v, want %+v", e, tt.want)
			}
		})
	}
}

// TestWait_noLogStream_kwok: a kwok node has no kubelet API, so a Pod's log
// stream never opens. Once the Pod ended, Wait lets its follower ask once
// more and returns when it gave up, rather than waiting out drainWait
// while the follower keeps asking the API server for a Pod that is gone.
func TestWait_noLogStream_kwok(t *testing.T) {
	t.Parallel()
	r, port := kwokRuntime(t)
	s := start(t, r, kwokSpec(testID(), port))
	st, _ := handleState(s.h)
	r.mu.Lock()
	f := r.follows[st.Pod]
	r.mu.Unlock()
	if f == nil {
		t.Fatal("Start with Spec.Logs set left no log follower")
	}
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	if err := r.Stop(ctx, s.h, "", 0); err != nil {
		t.Fatal(err)
	}
	s.wait(t)
	select {
	case <-f.done:
	default:
		t.Fatal("Wait returned while the log follower of the ended Pod was still asking for a stream")
	}
}

// BenchmarkStartReady_kwok measures the runtime's Start until the first
// HTTP 200 from the Pod's address, side by side with a bare client-go Pod
// create watched until Running (no HTTP), on the kwok node, and reports the
// medians of both and their ratio (medians: the machine is shared, and one
// slow API server write would swing a mean). Deleting the Pods is not timed.
func BenchmarkStartReady_kwok(b *testing.B) {
	r, port := kwokRuntime(b)
	ctx := context.Background()
	pods := r.cs.CoreV1().Pods(r.cfg.Namespace)
	var berthTimes, bareTimes []time.Duration
	for b.Loop() {
		began := time.Now()
		h, err := r.Start(ctx, kwokSpec(testID(), port))
		if err != nil {
			b.Fatal(err)
		}
		firstOK(b, h.Addr)
		berthTimes = append(berthTimes, time.Since(began))

		began = time.Now()
		bare := bareRunning(b, r)
		bareTimes = append(bareTimes, time.Since(began))

		b.StopTimer()
		if err := r.Stop(ctx, h, "", 0); err != nil {
			b.Fatal(err)
		}
		r.Cleanup(ctx, h)
		zero := int64(0)
		pods.Delete(ctx, bare, metav1.DeleteOptions{GracePeriodSeconds: &zero})
		b.StartTimer()
	}
	berth, bare := median(berthTimes), median(bareTimes)
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(berth.Microseconds())/1000, "berth-ms")
	b.ReportMetric(float64(bare.Microseconds())/1000, "bare-ms")
	b.ReportMetric(float64(berth)/float64(bare), "berth/bare")
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// bareRunning creates a minimal Pod on the kwok node and watches it until
// it runs; it returns the Pod's name.
func bareRunning(b testing.TB, r *Runtime) string {
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	pods := r.cs.CoreV1().Pods(r.cfg.Namespace)
	name := "bare-" + podSuffix()
	w, err := pods.Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + name})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Stop()
	_, err = pods.Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{NodeSelector: kwokLabels, Containers: []corev1.Container{{Name: "c", Image: "berth.test/nothing:1"}}}}, metav1.CreateOptions{})
	if err != nil {
		b.Fatal(err)
	}
	for ev := range w.ResultChan() {
		if pod, ok := ev.Object.(*corev1.Pod); ok && ev.Type != watch.Deleted && pod.Status.Phase == corev1.PodRunning {
			return name
		}
	}
	b.Fatalf("Pod %s: the watch ended before it ran: %v", name, ctx.Err())
	return ""
}

func podSuffix() string { id := testID(); return id[len(id)-12:] }

var benchClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}

// firstOK polls addr until it answers 200.
func firstOK(b testing.TB, addr string) {
	deadline := time.Now().Add(patience)
	for {
		resp, err := benchClient.Get("http://" + addr + "/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s: no 200 in %s: %v", addr, patience, err)
		}
		time.Sleep(time.Millisecond)
	}
}
