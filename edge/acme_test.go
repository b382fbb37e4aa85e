package edge

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"io/fs"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berthhq/berth/blob"
	"github.com/berthhq/berth/blob/file"
	"github.com/berthhq/berth/internal/pebbletest"
	"github.com/berthhq/berth/internal/testbin"
)

func fileBlobs(t *testing.T) blob.Store {
	t.Helper()
	s, err := file.New(t.TempDir(), blob.Options{History: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestBlobStorage(t *testing.T) {
	ctx := context.Background()
	s := NewBlobStorage(fileBlobs(t))
	names := []string{"certificates/ca/x.test/x.test.crt", "certificates/ca/x.test/x.test.key", "certificates/ca/wildcard_.y.test/wildcard_.y.test.crt", "acme/ca/users/a@b/a.json"}
	for _, n := range names {
		if err := s.Store(ctx, n, []byte("v:"+n)); err != nil {
			t.Fatal(err)
		}
	}
	if b, err := s.Load(ctx, names[0]); err != nil || string(b) != "v:"+names[0] {
		t.Errorf("Load = %q, %v", b, err)
	}
	if _, err := s.Load(ctx, "nope"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load(missing) = %v, want fs.ErrNotExist", err)
	}
	if !s.Exists(ctx, names[0]) || !s.Exists(ctx, "certificates/ca") || s.Exists(ctx, "certificates/c") {
		t.Error("Exists is wrong for a key, a directory or a partial name")
	}
	got, err := s.List(ctx, "certificates/ca", false)
	if want := []string{"certificates/ca/wildcard_.y.test", "certificates/ca/x.test"}; err != nil || !slices.Equal(got, want) {
		t.Errorf("List = %v, %v; want %v", got, err, want)
	}
	got, _ = s.List(ctx, "certificates", true)
	if len(got) != 3 {
		t.Errorf("recursive List = %v, want the 3 certificate files", got)
	}
	if ki, err := s.Stat(ctx, names[0]); err != nil || !ki.IsTerminal || ki.Size != int64(len("v:"+names[0])) {
		t.Errorf("Stat = %+v, %v", ki, err)
	}
	if err := s.Delete(ctx, "certificates/ca/x.test"); err != nil {
		t.Fatal(err)
	}
	if s.Exists(ctx, names[0]) || s.Exists(ctx, names[1]) || !s.Exists(ctx, names[2]) {
		t.Error("Delete of a directory removed the wrong keys")
	}

	// The lock excludes another holder (another replica) until unlocked.
	other := NewBlobStorage(s.blobs)
	if err := s.Lock(ctx, "issue_x"); err != nil {
		t.Fatal(err)
	}
	lctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	err = other.Lock(lctx, "issue_x")
	cancel()
	if err == nil {
		t.Fatal("a second holder took a held lock")
	}
	if err := s.Unlock(ctx, "issue_x"); err != nil {
		t.Fatal(err)
	}
	lctx, cancel = context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := other.Lock(lctx, "issue_x"); err != nil {
		t.Fatalf("lock after unlock: %v", err)
	}
	other.Unlock(ctx, "issue_x")

	// Goroutines of one process take turns too (certmagic locks one name
	// from several at once).
	var holders, most atomic.Int32
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Lock(ctx, "same"); err != nil {
				t.Error(err)
				return
			}
			n := holders.Add(1)
			for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
			}
			time.Sleep(50 * time.Millisecond)
			holders.Add(-1)
			if err := s.Unlock(ctx, "same"); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if most.Load() != 1 {
		t.Errorf("%d goroutines held the lock at once", most.Load())
	}
}

// replica is one Berth edge with ACME, its listeners, and its handshakes.
type replica struct {
	acme      *ACME
	tls, http net.Listener
}

func startReplica(t *testing.T, p *pebbletest.Pebble, storage *BlobStorage, tlsLn, httpLn net.Listener, cfg ACMEConfig) *replica {
	t.Helper()
	cfg.CA, cfg.Roots, cfg.Storage, cfg.Email = p.DirectoryURL, p.Roots, storage, "ops@berth.test"
	cfg.HTTPPort, cfg.TLSPort = port(httpLn), port(tlsLn)
	a, err := NewACME(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	tc := TLSConfig(a.GetCertificate)
	tc.NextProtos = append(tc.NextProtos, "acme-tls/1")
	srv, err := New(Config{Handler: echo, TLS: tc, ACMEHTTP: a.HandleHTTPChallenge, HTTPSPort: port(tlsLn)})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(tlsLn)
	go srv.ServeHTTP(httpLn)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return &replica{acme: a, tls: tlsLn, http: httpLn}
}

func port(ln net.Listener) int {
	_, p, _ := net.SplitHostPort(ln.Addr().String())
	n, _ := strconv.Atoi(p)
	return n
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", testbin.FreeAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// leaf is the certificate r serves for name, verified against roots.
func leaf(t *testing.T, r *replica, name string, roots *x509.CertPool) (*x509.Certificate, error) {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", r.tls.Addr().String(), &tls.Config{RootCAs: roots, ServerName: name})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0], nil
}

func TestACME_ObtainShareRenew(t *testing.T) {
	tlsA, httpA := listen(t), listen(t)
	p := pebbletest.Start(t, pebbletest.Options{HTTPPort: port(httpA), TLSPort: port(tlsA), ShortLived: 30 * time.Second})
	blobs := fileBlobs(t)
	roots := p.IssuerRoots(t)

	// Pebble picks a random profile for an order that names none: name one.
	a := startReplica(t, p, NewBlobStorage(blobs), tlsA, httpA, ACMEConfig{Profile: "default"})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const name = "app.berth.test"
	if err := a.acme.Manage(ctx, []string{name}); err != nil {
		t.Fatalf("obtain: %v", err)
	}
	first, err := leaf(t, a, name, roots)
	if err != nil {
		t.Fatalf("handshake with the obtained certificate: %v", err)
	}

	// A second replica, sharing the blob store, serves the same
	// certificate without asking the CA (its listeners are not those
	// Pebble validates against, so it could not have obtained one).
	b := startReplica(t, p, NewBlobStorage(blobs), listen(t), listen(t), ACMEConfig{Profile: "default"})
	if err := b.acme.Manage(ctx, []string{name}); err != nil {
		t.Fatalf("replica b: %v", err)
	}
	got, err := leaf(t, b, name, roots)
	if err != nil {
		t.Fatalf("replica b handshake: %v", err)
	}
	if got.SerialNumber.Cmp(first.SerialNumber) != 0 {
		t.Errorf("replica b serves serial %v, replica a %v: not shared", got.SerialNumber, first.SerialNumber)
	}

	// Replica b obtains a name of its own: Pebble validates at replica
	// a's listeners, which answer the challenge b stored.
	const other = "other.berth.test"
	if err := b.acme.Manage(ctx, []string{other}); err != nil {
		t.Fatalf("replica b obtains through replica a's listeners: %v", err)
	}
	if _, err := leaf(t, b, other, roots); err != nil {
		t.Errorf("replica b's own certificate: %v", err)
	}

	// Renewal: a third replica asks for short-lived (30 s) certificates
	// and checks every second; certmagic renews once a third of the
	// lifetime is left (or when the CA's renewal info says so), and the
	// new certificate is served before the first expires.
	c := startReplica(t, p, NewBlobStorage(blobs), listen(t), listen(t), ACMEConfig{RenewCheck: time.Second, Profile: "shortlived"})
	const short = "short.berth.test"
	if err := c.acme.Manage(ctx, []string{short}); err != nil {
		t.Fatalf("short-lived certificate: %v", err)
	}
	firstShort, err := leaf(t, c, short, roots)
	if err != nil {
		t.Fatal(err)
	}
	if life := firstShort.NotAfter.Sub(firstShort.NotBefore); life > time.Minute {
		t.Fatalf("certificate lives %v; the shortlived profile should make it 30s", life)
	}
	deadline := firstShort.NotAfter
	for {
		cur, err := leaf(t, c, short, roots)
		if err == nil && cur.SerialNumber.Cmp(firstShort.SerialNumber) != 0 {
			if !cur.NotAfter.After(firstShort.NotAfter) {
				t.Errorf("renewed certificate expires %v, not after the first's %v", cur.NotAfter, firstShort.NotAfter)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no renewal before the first certificate expired (last: %v)", err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func TestACME_WildcardDNS01(t *testing.T) {
	tlsLn, httpLn := listen(t), listen(t)
	p := pebbletest.Start(t, pebbletest.Options{HTTPPort: port(httpLn), TLSPort: port(tlsLn)})
	r := startReplica(t, p, NewBlobStorage(fileBlobs(t)), tlsLn, httpLn, ACMEConfig{
		DNS: p.DNSProvider(), DNSResolvers: []string{pebbletest.SOAServer(t, "berth.test")}, NoPropagationCheck: true, Profile: "default",
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := r.acme.Manage(ctx, []string{"*.berth.test"}); err != nil {
		t.Fatalf("wildcard over DNS-01: %v", err)
	}
	roots := p.IssuerRoots(t)
	for _, host := range []string{"abc-123.berth.test", "zzz.berth.test"} {
		c, err := leaf(t, r, host, roots)
		if err != nil {
			t.Fatalf("%s: %v", host, err)
		}
		if !slices.Contains(c.DNSNames, "*.berth.test") {
			t.Errorf("%s served %v, want the wildcard", host, c.DNSNames)
		}
	}
	// Plain HTTP redirects to the HTTPS listener.
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, _ := http.NewRequest(http.MethodGet, "http://"+httpLn.Addr().String()+"/x", nil)
	req.Host = "abc.berth.test"
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if want := "https://abc.berth.test:" + strconv.Itoa(port(tlsLn)) + "/x"; res.Header.Get("Location") != want {
		t.Errorf("redirect to %q, want %q", res.Header.Get("Location"), want)
	}
}

func TestACME_OnDemand(t *testing.T) {
	tlsLn, httpLn := listen(t), listen(t)
	p := pebbletest.Start(t, pebbletest.Options{HTTPPort: port(httpLn), TLSPort: port(tlsLn)})
	var (
		mu    sync.Mutex
		asked []string
	)
	r := startReplica(t, p, NewBlobStorage(fileBlobs(t)), tlsLn, httpLn, ACMEConfig{
		Profile: "default",
		OnDemand: func(_ context.Context, name string) error {
			mu.Lock()
			defer mu.Unlock()
			asked = append(asked, name)
			if strings.HasPrefix(name, "ok-") {
				return nil
			}
			return errors.New("not a host Berth named")
		},
	})
	roots := p.IssuerRoots(t)
	// The first handshake for an allowed name obtains its certificate.
	c, err := leaf(t, r, "ok-1.berth.test", roots)
	if err != nil {
		t.Fatalf("on-demand certificate for an allowed name: %v", err)
	}
	if !slices.Contains(c.DNSNames, "ok-1.berth.test") {
		t.Errorf("served %v", c.DNSNames)
	}
	if _, err := leaf(t, r, "evil.berth.test", roots); err == nil {
		t.Error("a certificate was obtained for a name the decision refused")
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Contains(asked, "evil.berth.test") {
		t.Errorf("the decision was not asked about evil.berth.test (asked %v)", asked)
	}
}
