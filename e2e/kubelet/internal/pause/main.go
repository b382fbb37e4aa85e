// Command pause is the pod sandbox's container in e2e/kubelet: it holds the
// Pod's namespaces and does nothing else until SIGTERM or SIGINT, like
// registry.k8s.io/pause, which a test here cannot pull. It must stay pure
// Go with no dependencies: it runs in a FROM scratch image.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	<-c
}
