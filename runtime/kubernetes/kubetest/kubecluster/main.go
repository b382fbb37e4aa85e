// Command kubecluster runs the test control plane of package kubetest
// (etcd, kube-apiserver, and a kwok node labelled type=kwok whose Pods get
// loopback IPs) until it is interrupted, for berth bench's kubernetes
// scenario. Once the cluster is up it writes, to the file named by its one
// argument, the environment berth bench reads:
//
//	BERTH_BENCH_KUBECONFIG=…  BERTH_BENCH_KUBE_NAMESPACE=bench
//	BERTH_BENCH_KUBE_NODE_SELECTOR=type=kwok
//
// The tools come from .ci/k8s-tools.sh ($BERTH_K8S_TOOLS). Not for
// anything but benchmarks: the cluster has no security to speak of.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/berthhq/berth/runtime/kubernetes/kubetest"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "kubecluster:", err)
		os.Exit(1)
	}
}

func run() error {
	if len(os.Args) != 2 {
		return fmt.Errorf("usage: kubecluster ENV-FILE")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	tools := os.Getenv("BERTH_K8S_TOOLS")
	if tools == "" {
		tools = kubetest.DefaultTools
	}
	c, err := kubetest.Start(tools)
	if err != nil {
		return err
	}
	defer c.Stop()
	ns, err := c.CreateNamespace(ctx, "bench")
	if err != nil {
		return err
	}
	node, err := c.NewKwokNode("kwok-bench", map[string]string{"type": "kwok"})
	if err != nil {
		return err
	}
	defer node.Close()
	env := fmt.Sprintf("BERTH_BENCH_KUBECONFIG=%s\nBERTH_BENCH_KUBE_NAMESPACE=%s\nBERTH_BENCH_KUBE_NODE_SELECTOR=type=kwok\n", c.Kubeconfig, ns)
	if err := os.WriteFile(os.Args[1], []byte(env), 0o600); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}
