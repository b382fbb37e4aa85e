package edge

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
	"github.com/berthhq/berth/api/apitest"
	"github.com/berthhq/berth/internal/pebbletest"
	"github.com/berthhq/berth/internal/testbin"
)

// bin holds the binaries TestMain builds once.
var bin struct{ berth, app string }

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "berth-edge-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e/edge:", err)
		os.Exit(1)
	}
	code := 1
	if bins, err := testbin.Build(dir); err != nil {
		fmt.Fprintln(os.Stderr, "e2e/edge:", err)
	} else if openAPI, err = apitest.Load(context.Background(), api.OpenAPI); err != nil {
		fmt.Fprintln(os.Stderr, "e2e/edge:", err)
	} else if err := buildApp(dir); err != nil {
		fmt.Fprintln(os.Stderr, "e2e/edge:", err)
	} else {
		bin.berth, bin.app = bins.Berth, filepath.Join(dir, "edgeapp")
		code = m.Run()
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

func buildApp(dir string) error {
	cmd := exec.Command("go", "build", "-o", filepath.Join(dir, "edgeapp"), "./edgeapp")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build edgeapp: %v\n%s", err, out)
	}
	return nil
}

// need fails the test in CI and skips it elsewhere, saying how to get what
// is missing.
func need(t *testing.T, what, howto string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is missing (CI is set, so this fails instead of skipping); install it with: %s", what, howto)
	}
	t.Skipf("%s is missing; install it with: %s", what, howto)
}

const suffix = "berth.test"

// openAPI is api.OpenAPI, loaded by TestMain.
var openAPI *apitest.Doc

// newClient is a client of the control API at base whose every answer is
// checked against api/openapi.json; t fails, after the Berth stopped, for
// each answer the document does not describe. Call it before registering
// the Berth's stop.
func newClient(t *testing.T, base, key string) *api.Client {
	var mu sync.Mutex
	var mismatches []error
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, err := range mismatches {
			t.Errorf("control API answer does not match api/openapi.json: %v", err)
		}
	})
	hc := &http.Client{Transport: &apitest.Transport{Doc: openAPI, For: func(*http.Request) func(error) {
		return func(err error) {
			mu.Lock()
			defer mu.Unlock()
			mismatches = append(mismatches, err)
		}
	}}}
	return api.NewClient(base, key, hc)
}

// edgeBerth is one `berth serve` with its edge on HTTPS, certificates from
// a Pebble started for it.
type edgeBerth struct {
	API      string
	TLSAddr  string
	HTTPAddr string
	Key      string
	Client   *api.Client
	Pebble   *pebbletest.Pebble
	out      testbin.SyncBuffer
}

// startEdgeBerth runs berth serve with --public-host-suffix berth.test, a
// wildcard certificate for *.berth.test obtained from Pebble over DNS-01
// through the exec: hook, and extra flags; it waits until the edge serves
// the certificate.
func startEdgeBerth(t *testing.T, extra ...string) *edgeBerth {
	t.Helper()
	return startACMEBerth(t, true, extra...)
}

// startACMEBerth is startEdgeBerth; without dns01, certificates come over
// HTTP-01 or TLS-ALPN-01: one for berth.test at start, then one per
// backend host at its first handshake.
func startACMEBerth(t *testing.T, dns01 bool, extra ...string) *edgeBerth {
	t.Helper()
	dir := t.TempDir()
	apiAddr, proxyAddr, backendAddr := testbin.FreeAddr(t), testbin.FreeAddr(t), testbin.FreeAddr(t)
	tlsAddr, httpAddr := testbin.FreeAddr(t), testbin.FreeAddr(t)
	p := pebbletest.Start(t, pebbletest.Options{HTTPPort: port(httpAddr), TLSPort: port(tlsAddr)})
	soa := pebbletest.SOAServer(t, suffix)

	// The DNS-01 hook a deployment would point at its DNS host's API;
	// here, the challenge server's.
	hook := filepath.Join(dir, "dns-hook")
	script := `#!/bin/sh
set -e
case "$1" in
present) curl -sf -X POST -d "{\"host\":\"$2\",\"value\":\"$3\"}" ` + p.ChallURL + `/set-txt ;;
cleanup) curl -sf -X POST -d "{\"host\":\"$2\"}" ` + p.ChallURL + `/clear-txt ;;
*) exit 2 ;;
esac
`
	if err := os.WriteFile(hook, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	b := &edgeBerth{API: "http://" + apiAddr, TLSAddr: tlsAddr, HTTPAddr: httpAddr, Key: "edge-test-key", Pebble: p}
	b.Client = newClient(t, b.API, b.Key)
	args := []string{"serve",
		"--api-addr", apiAddr, "--proxy-addr", proxyAddr, "--backend-api-addr", backendAddr,
		"--data-dir", dir, "--runtime", "process", "--api-key", b.Key, "--log-level", "debug",
		"--proxy-tls-addr", tlsAddr, "--proxy-http-addr", httpAddr, "--public-host-suffix", suffix,
		"--acme-email", "e2e@berth.test", "--acme-ca", p.DirectoryURL, "--acme-ca-roots", p.RootsFile,
		"--acme-profile", "default",
	}
	probe := "probe." + suffix
	if dns01 {
		args = append(args, "--acme-dns", "exec:"+hook, "--acme-dns-resolvers", soa,
			// The challenge server is its own authority; nothing to wait for.
			"--acme-dns-propagation-timeout", "-1s")
	} else {
		probe = suffix
	}
	args = append(args, extra...)
	cmd := exec.Command(bin.berth, args...)
	cmd.Dir = dir
	cmd.Env = testbin.CleanEnv()
	cmd.Stdout, cmd.Stderr = &b.out, &b.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start berth: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("berth exited with %v after SIGINT, want status 0", err)
			}
		case <-time.After(60 * time.Second):
			t.Errorf("berth did not exit within 60s of SIGINT; killing it")
			cmd.Process.Signal(syscall.SIGKILL)
			<-done
		}
		if t.Failed() {
			t.Logf("berth output:\n%s", b.out.String())
		}
	})
	roots := p.IssuerRoots(t)
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := tls.Dial("tcp", tlsAddr, &tls.Config{RootCAs: roots, ServerName: probe})
		if err == nil {
			c.Close()
			return b
		}
		select {
		case err := <-done:
			t.Fatalf("berth exited: %v\n%s", err, b.out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the edge did not serve a certificate for %s within 60s (%v)\n%s", probe, err, b.out.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func port(addr string) int {
	_, p, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(p)
	return n
}

// connect connects key to an edgeapp backend and waits until it is ready.
func (b *edgeBerth) connect(t *testing.T, key string) *api.ConnectResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := b.Client.Connect(ctx, api.ConnectRequest{Key: key, Wait: true, Spawn: &berth.SpawnConfig{Command: []string{bin.app}}})
	if err != nil {
		t.Fatalf("connect %s: %v", key, err)
	}
	return resp
}

// httpsClient trusts Pebble's issuer and sends every host to the edge.
func (b *edgeBerth) httpsClient(t *testing.T, roots *x509.CertPool) *http.Client {
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: roots},
		ForceAttemptHTTP2: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if strings.HasSuffix(addr, ":"+strconv.Itoa(port(b.TLSAddr))) {
				addr = b.TLSAddr
			}
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}
