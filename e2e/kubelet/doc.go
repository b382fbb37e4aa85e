// Package kubelet is Berth's end-to-end test on a real node: etcd and
// kube-apiserver (runtime/kubernetes/kubetest), a private containerd
// (Debian's, with its own root, state and socket; never Docker's), a real
// kubelet v1.37.2 built by .ci/k8s-tools.sh and registered as a Node, a CNI
// bridge from Debian's containernetworking-plugins on a private subnet, and
// FROM scratch images (the test backend, and a pause image for the pod
// sandbox) imported into containerd from `docker save`, so nothing is
// pulled. The real `berth serve --runtime kubernetes` runs a backend there.
//
// No kube-scheduler runs: the test binds Berth's Pods to its Node through
// the pods/binding subresource, the one call a scheduler makes.
//
// A kubelet is a host-wide thing: it makes the kubepods cgroups, sets three
// sysctls (protectKernelDefaults is false, since this host's values differ
// from the kubelet's and it would refuse to start) and writes under
// /var/lib/kubelet, /var/lib/cni and /var/log/containers. The test takes a
// machine-wide lock, and undoes all of it in its cleanup, failed or not.
// It needs root; it must never touch Docker's containerd.
package kubelet
