// Package pebbletest starts a real ACME server for a test: Pebble, Let's
// Encrypt's test CA, with its challenge test server as DNS, both on
// loopback. Every name resolves to 127.0.0.1, so Pebble validates HTTP-01
// and TLS-ALPN-01 against the ports the test's Berth listens on, and
// DNS-01 against the TXT records set through the challenge server.
//
// The binaries come from .ci/pebble.sh (BERTH_TEST_PEBBLE,
// BERTH_TEST_CHALLTESTSRV, or /var/cache/berth-ci/bin). Tests only.
package pebbletest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/libdns/libdns"
	"github.com/miekg/dns"

	"github.com/berthhq/berth/internal/testbin"
)

// Pebble is a running Pebble and challenge test server.
type Pebble struct {
	// DirectoryURL is the ACME directory.
	DirectoryURL string
	// Roots trusts Pebble's own HTTPS endpoints (not the certificates it
	// issues: see IssuerRootPEM).
	Roots *x509.CertPool
	// RootsFile holds Roots in PEM, for a --acme-ca-roots flag.
	RootsFile string
	// DNS is the challenge server's DNS address (host:port).
	DNS string
	// ChallURL is the challenge server's management API (POST /set-txt
	// {"host": FQDN, "value": V}, /clear-txt {"host": FQDN}).
	ChallURL string
	mgmt     string // Pebble's management API, https
	hc       *http.Client
}

// Options say where Pebble validates challenges.
type Options struct {
	HTTPPort, TLSPort int // the test's Berth listeners
	// ShortLived is the validity of certificates of the "shortlived"
	// profile; 0: 6 days.
	ShortLived time.Duration
}

// binaries returns the paths of pebble and pebble-challtestsrv, failing the
// test in CI and skipping it elsewhere when they are missing.
func binaries(t testing.TB) (string, string) {
	t.Helper()
	dir := "/var/cache/berth-ci/bin"
	pebble, chal := os.Getenv("BERTH_TEST_PEBBLE"), os.Getenv("BERTH_TEST_CHALLTESTSRV")
	if pebble == "" {
		pebble = filepath.Join(dir, "pebble")
	}
	if chal == "" {
		chal = filepath.Join(dir, "pebble-challtestsrv")
	}
	for _, p := range []string{pebble, chal} {
		if _, err := os.Stat(p); err != nil {
			msg := fmt.Sprintf("Pebble not built (%v)", err)
			if os.Getenv("CI") != "" {
				t.Fatalf("%s; CI must have it: source .ci/services.sh", msg)
			}
			t.Skipf("%s; build it with: source .ci/pebble.sh && _berth_pebble (or source .ci/services.sh)", msg)
		}
	}
	return pebble, chal
}

// Start starts Pebble and its challenge server for t; both stop at its end.
func Start(t testing.TB, opts Options) *Pebble {
	t.Helper()
	pebbleBin, chalBin := binaries(t)
	dir := t.TempDir()
	if opts.ShortLived == 0 {
		opts.ShortLived = 6 * 24 * time.Hour
	}
	roots, certFile, keyFile := selfCA(t, dir)

	dns := testbin.FreeAddr(t)
	chalMgmt := testbin.FreeAddr(t)
	_, chalPort, _ := net.SplitHostPort(chalMgmt)
	startProc(t, dir, "challtestsrv", chalBin, nil,
		"-management", ":"+chalPort, "-dnsserver", dns, "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
		"-http01", "", "-https01", "", "-tlsalpn01", "", "-doh", "")

	listen, mgmt := testbin.FreeAddr(t), testbin.FreeAddr(t)
	cfg := map[string]any{"pebble": map[string]any{
		"listenAddress":                  listen,
		"managementListenAddress":        mgmt,
		"certificate":                    certFile,
		"privateKey":                     keyFile,
		"httpPort":                       opts.HTTPPort,
		"tlsPort":                        opts.TLSPort,
		"ocspResponderURL":               "",
		"externalAccountBindingRequired": false,
		"retryAfter":                     map[string]int{"authz": 1, "order": 1},
		"keyAlgorithm":                   "ecdsa",
		"profiles": map[string]any{
			"default":    map[string]any{"description": "default", "validityPeriod": 90 * 24 * 3600},
			"shortlived": map[string]any{"description": "short-lived", "validityPeriod": int(opts.ShortLived / time.Second)},
		},
	}}
	b, _ := json.Marshal(cfg)
	cfgFile := filepath.Join(dir, "pebble.json")
	if err := os.WriteFile(cfgFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	// No sleeps before validating, and no deliberately bad nonces: the
	// test is about Berth, not about retries.
	startProc(t, dir, "pebble", pebbleBin, []string{"PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0"},
		"-config", cfgFile, "-dnsserver", dns)

	p := &Pebble{
		DirectoryURL: "https://" + listen + "/dir",
		Roots:        roots,
		DNS:          dns,
		mgmt:         "https://" + mgmt,
		ChallURL:     "http://" + chalMgmt,
		RootsFile:    filepath.Join(dir, "pebble-ca.pem"),
		hc:           &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}, Timeout: 10 * time.Second},
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		res, err := p.hc.Get(p.DirectoryURL)
		if err == nil {
			res.Body.Close()
			if res.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("pebble does not answer at %s: %v (logs in %s)", p.DirectoryURL, err, dir)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return p
}

// IssuerRootPEM is the root of the certificates Pebble issues: a new one
// each time Pebble starts.
func (p *Pebble) IssuerRootPEM(t testing.TB) []byte {
	t.Helper()
	res, err := p.hc.Get(p.mgmt + "/roots/0")
	if err != nil {
		t.Fatalf("pebble root: %v", err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != 200 {
		t.Fatalf("pebble root: %s %s", res.Status, b)
	}
	return b
}

// IssuerRoots is IssuerRootPEM as a pool.
func (p *Pebble) IssuerRoots(t testing.TB) *x509.CertPool {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(p.IssuerRootPEM(t)) {
		t.Fatal("pebble root: no certificate")
	}
	return pool
}

// DNSProvider sets DNS-01 TXT records on the challenge server: a libdns
// provider, as a real DNS host's would be.
func (p *Pebble) DNSProvider() *DNSProvider { return &DNSProvider{p: p} }

// DNSProvider is a libdns provider for the challenge server.
type DNSProvider struct{ p *Pebble }

// fqdn names rec absolutely.
func fqdn(rec libdns.Record, zone string) string {
	return libdns.AbsoluteName(rec.RR().Name, zone)
}

// AppendRecords implements libdns.RecordAppender (TXT records only).
func (d *DNSProvider) AppendRecords(ctx context.Context, zone string, recs []libdns.Record) ([]libdns.Record, error) {
	for _, r := range recs {
		rr := r.RR()
		if rr.Type != "TXT" {
			return nil, fmt.Errorf("challtestsrv: %s records not supported", rr.Type)
		}
		if err := d.post(ctx, "/set-txt", map[string]string{"host": fqdn(r, zone), "value": rr.Data}); err != nil {
			return nil, err
		}
	}
	return recs, nil
}

// DeleteRecords implements libdns.RecordDeleter.
func (d *DNSProvider) DeleteRecords(ctx context.Context, zone string, recs []libdns.Record) ([]libdns.Record, error) {
	for _, r := range recs {
		if err := d.post(ctx, "/clear-txt", map[string]string{"host": fqdn(r, zone)}); err != nil {
			return nil, err
		}
	}
	return recs, nil
}

func (d *DNSProvider) post(ctx context.Context, path string, body any) error {
	b, _ := json.Marshal(body)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, d.p.ChallURL+path, bytes.NewReader(b))
	res, err := d.p.hc.Do(req)
	if err != nil {
		return fmt.Errorf("challtestsrv %s: %w", path, err)
	}
	res.Body.Close()
	if res.StatusCode != 200 {
		return fmt.Errorf("challtestsrv %s: %s", path, res.Status)
	}
	return nil
}

func startProc(t testing.TB, dir, name, bin string, env []string, args ...string) {
	t.Helper()
	logf, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		logf.Close()
		if t.Failed() {
			if b, err := os.ReadFile(logf.Name()); err == nil {
				t.Logf("%s log (last 3000 bytes):\n%s", name, tail(b, 3000))
			}
		}
	})
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// selfCA makes a CA and a certificate from it for Pebble's own listeners
// (localhost, 127.0.0.1).
func selfCA(t testing.TB, dir string) (*x509.CertPool, string, string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "pebbletest CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(48 * time.Hour),
		IsCA: true, KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(48 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile := filepath.Join(dir, "pebble-cert.pem"), filepath.Join(dir, "pebble-key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	os.WriteFile(filepath.Join(dir, "pebble-ca.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return pool, certFile, keyFile
}

// SOAServer answers SOA queries for every name under zone with zone's SOA,
// on loopback, and returns its address: the resolver certmagic asks to find
// the zone of a DNS-01 record, which the challenge server cannot answer
// (it implements no SOA queries).
func SOAServer(t testing.TB, zone string) string {
	t.Helper()
	zone = dns.Fqdn(zone)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := dns.NewServeMux()
	mux.HandleFunc(".", func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Authoritative = true
		for _, q := range r.Question {
			if q.Qtype == dns.TypeSOA && q.Name == zone {
				m.Answer = append(m.Answer, &dns.SOA{
					Hdr: dns.RR_Header{Name: zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 60},
					Ns:  "ns." + zone, Mbox: "hostmaster." + zone, Serial: 1, Refresh: 60, Retry: 60, Expire: 60, Minttl: 60,
				})
			} else if !dns.IsSubDomain(zone, q.Name) {
				m.Rcode = dns.RcodeNameError
			}
		}
		w.WriteMsg(m)
	})
	srv := &dns.Server{PacketConn: pc, Handler: mux}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}
