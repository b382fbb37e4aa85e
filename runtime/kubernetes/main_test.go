package kubernetes

import (
	"context"
	"crypto/rand"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/runtime"
	"github.com/berthhq/berth/runtime/kubernetes/kubetest"
	"github.com/berthhq/berth/runtime/runtimetest"
)

const (
	testImage = "berth.test/testbackend:1"
	patience  = time.Minute
)

// nodeLabels select the test node (kubetest.Node) for the runtime's Pods.
var nodeLabels = map[string]string{"berth.test/node": "kubetest"}

var env struct {
	once sync.Once
	c    *kubetest.Cluster
	node *kubetest.Node
	ns   string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if env.node != nil {
		env.node.Close()
	}
	if kwokEnv.node != nil {
		kwokEnv.node.Close()
	}
	kubetest.StopShared()
	os.Exit(code)
}

// cluster returns the shared API server, the test node, and the namespace
// the tests' runtimes use.
func cluster(t testing.TB) (*kubetest.Cluster, *kubetest.Node, string) {
	t.Helper()
	c := kubetest.Shared(t)
	bin := runtimetest.BuildTestBackend(t)
	env.once.Do(func() {
		env.c = c
		env.node, env.err = c.NewNode("kubetest", nodeLabels, map[string]string{testImage: bin})
		if env.err == nil {
			env.ns = c.Namespace(t)
		}
	})
	if env.err != nil {
		t.Fatal(env.err)
	}
	return env.c, env.node, env.ns
}

// newRuntime returns a runtime on the shared cluster with cfg's zero fields
// filled in for it (a fresh Instance unless cfg names one); closed when the
// test ends.
func newRuntime(t *testing.T, cfg Config) *Runtime {
	t.Helper()
	c, _, ns := cluster(t)
	cfg.REST = c.Config
	if cfg.Namespace == "" {
		cfg.Namespace = ns
	}
	if cfg.Instance == "" {
		cfg.Instance = "t-" + strings.ToLower(rand.Text()[:10])
	}
	if cfg.NodeSelector == nil {
		cfg.NodeSelector = nodeLabels
	}
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	r, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// freePort returns a port nothing listens on: the test node's Pods share
// the host's network, so each listens on a port of its own.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func testSpec(t testing.TB, id string, extra map[string]string) runtime.Spec {
	port := freePort(t)
	return runtime.Spec{
		BackendID: id,
		Key:       "key-" + id,
		Spawn:     berth.SpawnConfig{Image: testImage},
		Env:       runtimetest.Env(id, port, extra),
		Port:      port,
	}
}

func testID() string { return "bk_kt" + strings.ToLower(rand.Text()[:12]) }

func TestConformance(t *testing.T) {
	cluster(t)
	runtimetest.Run(t, runtimetest.Harness{
		New:  func(t *testing.T) runtime.Runtime { return newRuntime(t, Config{}) },
		Spec: func(t *testing.T, id string, env map[string]string) runtime.Spec { return testSpec(t, id, env) },
		Restart: func(t *testing.T, old runtime.Runtime) runtime.Runtime {
			// A new client and informer with no memory of what the old
			// one started: all it has is the persisted handle.
			return newRuntime(t, Config{Instance: old.(*Runtime).cfg.Instance})
		},
	})
}
