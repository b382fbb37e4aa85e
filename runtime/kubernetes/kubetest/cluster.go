// Package kubetest runs a real Kubernetes control plane for tests: etcd and
// kube-apiserver built from source by .ci/k8s-tools.sh, plus Node, a small
// node agent that plays the kubelet's part for one Node (it runs a Pod's
// container as a local process, reports its status the way a kubelet does,
// and serves its logs to the API server), and kwok for Pods that need only
// a lifecycle. Nothing here is a fake of the API server: every object goes
// through kube-apiserver and etcd.
//
// It must never be imported outside tests (and its kubecluster command,
// which .ci/bench runs for berth bench's kubernetes scenario).
package kubetest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/berthhq/berth/internal/testbin"
)

// DefaultTools is where .ci/k8s-tools.sh caches the binaries;
// $BERTH_K8S_TOOLS overrides it.
const DefaultTools = "/var/cache/berth-ci/k8s"

// Tools returns the directory that holds kube-apiserver, etcd and kwok. When
// one is missing the test fails under CI=true and is skipped otherwise,
// saying how to build them.
func Tools(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("BERTH_K8S_TOOLS")
	if dir == "" {
		dir = DefaultTools
	}
	for _, name := range []string{"kube-apiserver", "etcd", "kwok"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			msg := fmt.Sprintf("the Kubernetes test tools are missing (%v)", err)
			if os.Getenv("CI") != "" {
				t.Fatalf("%s; CI must have them: .ci/run builds them with .ci/k8s-tools.sh", msg)
			}
			t.Skipf("%s; build them once (about 7 minutes) with `bash .ci/k8s-tools.sh`, or point BERTH_K8S_TOOLS at a directory that has them", msg)
		}
	}
	return dir
}

// Cluster is a running etcd and kube-apiserver.
type Cluster struct {
	// Config reaches the API server as a member of system:masters.
	Config *rest.Config
	// Client uses Config.
	Client kubernetes.Interface
	// Kubeconfig is a file with Config in it, for kwok and for berth serve.
	Kubeconfig string
	// Dir holds the cluster's files (certificates, etcd's data).
	Dir string

	tools    string
	ca       *x509.Certificate
	caKey    *ecdsa.PrivateKey
	procs    []*exec.Cmd
	nodeMu   sync.Mutex
	nodePort int
}

var shared struct {
	once sync.Once
	c    *Cluster
	err  error
}

// Shared returns the test binary's cluster, starting it on first use. Call
// StopShared from TestMain when the tests are done.
func Shared(t testing.TB) *Cluster {
	t.Helper()
	tools := Tools(t)
	shared.once.Do(func() { shared.c, shared.err = Start(tools) })
	if shared.err != nil {
		t.Fatalf("start the test cluster: %v", shared.err)
	}
	return shared.c
}

// StopShared stops the cluster Shared started, if any.
func StopShared() {
	if shared.c != nil {
		shared.c.Stop()
	}
}

// Start starts etcd and kube-apiserver from the binaries in tools, with
// their files in a new temporary directory, and returns once the API server
// is ready.
func Start(tools string) (*Cluster, error) {
	dir, err := os.MkdirTemp("", "berth-kubetest-")
	if err != nil {
		return nil, err
	}
	c := &Cluster{Dir: dir, tools: tools}
	if err := c.start(tools); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

func (c *Cluster) start(tools string) error {
	etcdClient, etcdPeer, apiPort := freePort(), freePort(), freePort()
	etcdLog, _ := os.Create(filepath.Join(c.Dir, "etcd.log"))
	etcd := exec.Command(filepath.Join(tools, "etcd"),
		"--data-dir", filepath.Join(c.Dir, "etcd"),
		"--listen-client-urls", fmt.Sprintf("http://127.0.0.1:%d", etcdClient),
		"--advertise-client-urls", fmt.Sprintf("http://127.0.0.1:%d", etcdClient),
		"--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", etcdPeer),
		"--initial-advertise-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", etcdPeer),
		"--initial-cluster", fmt.Sprintf("default=http://127.0.0.1:%d", etcdPeer),
		"--unsafe-no-fsync", "--quota-backend-bytes", strconv.Itoa(1<<30))
	etcd.Stdout, etcd.Stderr = etcdLog, etcdLog
	if err := c.run(etcd); err != nil {
		return fmt.Errorf("etcd: %w", err)
	}

	if err := c.makeCA(); err != nil {
		return err
	}
	token := rand.Text()
	files := map[string][]byte{
		"tokens.csv": fmt.Appendf(nil, "%s,berth-test-admin,berth-test-admin,system:masters\n", token),
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.MarshalECPrivateKey(saKey)
	if err != nil {
		return err
	}
	files["sa.key"] = pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	files["ca.crt"] = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.ca.Raw})
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(c.Dir, name), b, 0o600); err != nil {
			return err
		}
	}
	apiLog, _ := os.Create(filepath.Join(c.Dir, "kube-apiserver.log"))
	api := exec.Command(filepath.Join(tools, "kube-apiserver"),
		"--etcd-servers", fmt.Sprintf("http://127.0.0.1:%d", etcdClient),
		"--bind-address", "127.0.0.1",
		"--advertise-address", "127.0.0.1",
		"--endpoint-reconciler-type", "none", // the advertised address is loopback
		"--secure-port", strconv.Itoa(apiPort),
		"--cert-dir", filepath.Join(c.Dir, "apiserver"),
		"--token-auth-file", filepath.Join(c.Dir, "tokens.csv"),
		"--authorization-mode", "RBAC",
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-account-key-file", filepath.Join(c.Dir, "sa.key"),
		"--service-account-signing-key-file", filepath.Join(c.Dir, "sa.key"),
		"--service-cluster-ip-range", "10.0.0.0/24",
		"--kubelet-certificate-authority", filepath.Join(c.Dir, "ca.crt"),
		"--kubelet-preferred-address-types", "InternalIP",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		"--v", "1")
	api.Stdout, api.Stderr = apiLog, apiLog
	if err := c.run(api); err != nil {
		return fmt.Errorf("kube-apiserver: %w", err)
	}

	c.Config = &rest.Config{
		Host:            fmt.Sprintf("https://127.0.0.1:%d", apiPort),
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{Insecure: true},
		QPS:             200,
		Burst:           400,
	}
	cs, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		return err
	}
	c.Client = cs
	if err := c.waitReady(api, 90*time.Second); err != nil {
		logs, _ := os.ReadFile(filepath.Join(c.Dir, "kube-apiserver.log"))
		return fmt.Errorf("kube-apiserver: %w\n%s", err, tail(logs, 4000))
	}
	c.Kubeconfig = filepath.Join(c.Dir, "kubeconfig")
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: %s
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: %s
contexts:
- name: test
  context: {cluster: test, user: admin}
current-context: test
`, c.Config.Host, token)
	return os.WriteFile(c.Kubeconfig, []byte(kc), 0o600)
}

func (c *Cluster) run(cmd *exec.Cmd) error {
	// Its own process group, and a death signal: a killed test binary
	// leaves no API server behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	c.procs = append(c.procs, cmd)
	return nil
}

func (c *Cluster) waitReady(api *exec.Cmd, patience time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	exited := make(chan error, 1)
	go func() { _, err := api.Process.Wait(); exited <- err }()
	var last error
	for {
		body, err := c.Client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err == nil {
			// The namespaces the system makes are there once ready;
			// "default" is what kwok and the tests expect.
			return nil
		}
		last = fmt.Errorf("%v %s", err, body)
		select {
		case <-ctx.Done():
			return fmt.Errorf("not ready in %s: %v", patience, last)
		case err := <-exited:
			return fmt.Errorf("exited: %v", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Stop kills the API server and etcd and removes their files, unless
// $BERTH_KUBETEST_KEEP is set (to read their logs).
func (c *Cluster) Stop() {
	for i := len(c.procs) - 1; i >= 0; i-- {
		p := c.procs[i]
		syscall.Kill(-p.Process.Pid, syscall.SIGKILL)
		p.Wait()
	}
	c.procs = nil
	if os.Getenv("BERTH_KUBETEST_KEEP") != "" {
		fmt.Fprintf(os.Stderr, "kubetest: the cluster's files (logs) are kept in %s\n", c.Dir)
		return
	}
	os.RemoveAll(c.Dir)
}

// Namespace creates a namespace for one test (see CreateNamespace).
func (c *Cluster) Namespace(t testing.TB) string {
	t.Helper()
	ns, err := c.CreateNamespace(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	return ns
}

// CreateNamespace creates namespace name (a generated one when empty)
// with the "default" ServiceAccount that admission requires of Pods (no
// controller manager runs here to make it), and returns its name.
func (c *Cluster) CreateNamespace(ctx context.Context, name string) (string, error) {
	meta := metav1.ObjectMeta{Name: name}
	if name == "" {
		meta.GenerateName = "berth-test-"
	}
	ns, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: meta}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("create namespace: %w", err)
	}
	if _, err := c.Client.CoreV1().ServiceAccounts(ns.Name).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return "", fmt.Errorf("create service account: %w", err)
	}
	return ns.Name, nil
}

func (c *Cluster) makeCA() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "berth kubetest CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	c.ca, err = x509.ParseCertificate(der)
	c.caKey = key
	return err
}

// servingCert returns a certificate for 127.0.0.1 signed by the cluster's
// CA, which kube-apiserver trusts for kubelets (--kubelet-certificate-authority).
func (c *Cluster) servingCert(ips ...net.IP) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "kubetest node"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  append([]net.IP{net.IPv4(127, 0, 0, 1)}, ips...),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.ca, &key.PublicKey, c.caKey)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// KubeletServingCert writes a serving certificate for 127.0.0.1 and ips,
// signed by the CA kube-apiserver trusts for kubelets, and its key, as PEM
// files in dir, and returns their paths: what a real kubelet's
// tlsCertFile and tlsPrivateKeyFile name, so the API server reaches it
// (pods/log) at its Node's InternalIP.
func (c *Cluster) KubeletServingCert(dir string, ips ...net.IP) (certFile, keyFile string, err error) {
	cert, err := c.servingCert(ips...)
	if err != nil {
		return "", "", err
	}
	der, err := x509.MarshalECPrivateKey(cert.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		return "", "", err
	}
	certFile, keyFile = filepath.Join(dir, "kubelet.crt"), filepath.Join(dir, "kubelet.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o644); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}

// Impersonate returns a client that acts as user (e.g.
// "system:serviceaccount:NS:NAME") through impersonation, so RBAC applies
// as it would to that user.
func (c *Cluster) Impersonate(user string, groups ...string) (kubernetes.Interface, error) {
	cfg := rest.CopyConfig(c.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: groups}
	return kubernetes.NewForConfig(cfg)
}

// freePort is a loopback port below the ephemeral range, where another
// process's outgoing connection cannot take it before etcd or the API
// server binds it (see testbin.PickAddr).
func freePort() int {
	addr, err := testbin.PickAddr()
	if err != nil {
		panic(err)
	}
	_, port, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(port)
	return n
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		b = b[len(b)-n:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return b
}

// ErrNoPod is returned by the Node's test hooks for a pod it does not run.
var ErrNoPod = errors.New("kubetest: no such pod on the node")

var _ = http.StatusOK
