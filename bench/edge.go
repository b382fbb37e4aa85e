package bench

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
)

// The edge's HTTPS, against nginx terminating TLS in front of the same
// backend process, with the same certificate (ECDSA P-256) and the same
// TLS 1.3 parameters (TLS_AES_128_GCM_SHA256 over X25519, which both pick
// for the clients used here; the note says what was negotiated).

func init() {
	scenarios = append(scenarios, &scenario{
		name:    "https",
		summary: "the edge's HTTPS throughput and TLS handshakes/s, vs nginx terminating TLS to the same backend",
		figures: []figureSpec{
			{name: "HTTPS throughput, 32 conns", unit: "/s", baseline: "nginx", target: target{ratioAtLeast, 1.0},
				method: "GET / of the bench backend over 32 keep-alive HTTPS (HTTP/1.1, TLS 1.3) connections from wrk, through Berth's edge (--proxy-tls-addr, path-prefix mode, limits off) and through nginx (ssl, same certificate and suite, upstream keepalive) to the same backend process; 2 s warm-up each, then 5 blocks of 2 s each, taking turns; median of the runs"},
			{name: "TLS handshakes/s, 16 clients", unit: "/s", baseline: "nginx", target: target{ratioAtLeast, 1.0},
				method: "full TLS 1.3 handshakes (no resumption) from 16 concurrent Go clients, each connection closed once its handshake is done, against Berth's edge and nginx in turns of 2 s, 5 blocks each; the clients offer resumption (psk_key_exchange_modes, as browsers do) from an empty session cache per connection, so both servers issue one session ticket per handshake (Go's default; nginx with session tickets on and NumTickets 1) and each does the same work"},
		},
		skip: skipNoHTTPSLoad,
		run:  runHTTPS,
	})
}

// selfSigned writes an ECDSA P-256 certificate for 127.0.0.1 and its key.
func selfSigned(dir string) (certFile, keyFile string, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "berth bench"},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return "", "", err
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return "", "", err
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return "", "", err
	}
	return certFile, keyFile, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
}

// edgeServer is a Berth server with its edge on HTTPS (a self-signed
// certificate, limits off) and one ready bench backend.
type edgeServer struct {
	dir, certFile, keyFile, tlsAddr string
	srv                             *berthServer
	res                             *api.ConnectResponse
}

// startEdgeServer starts an edgeServer named name (its files in
// e.dir/name) with extra flags, and connects key. Stop srv when done,
// also on an error (then srv may be nil).
func (e *env) startEdgeServer(ctx context.Context, name, key string, extra ...string) (*edgeServer, error) {
	es := &edgeServer{dir: filepath.Join(e.dir, name)}
	if err := os.MkdirAll(es.dir, 0o755); err != nil {
		return es, err
	}
	var err error
	if es.certFile, es.keyFile, err = selfSigned(es.dir); err != nil {
		return es, err
	}
	port, err := freePort()
	if err != nil {
		return es, err
	}
	es.tlsAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	keyb := make([]byte, 16)
	rand.Read(keyb)
	args := append([]string{"--proxy-tls-addr", es.tlsAddr, "--proxy-tls-cert", es.certFile, "--proxy-tls-key", es.keyFile,
		"--edge-conns-per-ip", "0", "--edge-rate", "0"}, extra...)
	if es.srv, err = e.startServer(ctx, name, hex.EncodeToString(keyb), args...); err != nil {
		return es, err
	}
	c := api.NewClient(es.srv.API, es.srv.apiKey, e.hc)
	if es.res, err = c.Connect(ctx, api.ConnectRequest{Key: key, Spawn: e.spawnConfig(3600), User: liveUser, Wait: true}); err != nil {
		return es, fmt.Errorf("connect through the edge's server: %w", err)
	}
	if es.res.State != berth.StateReady {
		return es, fmt.Errorf("the bench backend is %s, not ready", es.res.State)
	}
	return es, nil
}

// stop stops the server, if it started.
func (es *edgeServer) stop() {
	if es.srv != nil {
		es.srv.stop()
	}
}

func runHTTPS(ctx context.Context, e *env, r *runCtx) (*result, error) {
	es, err := e.startEdgeServer(ctx, fmt.Sprintf("edge-%d", r.n), "bench-https")
	defer es.stop()
	if err != nil {
		return nil, err
	}
	dir, certFile, keyFile, srv, res := es.dir, es.certFile, es.keyFile, es.srv, es.res
	u, err := url.Parse(res.URL)
	if err != nil {
		return nil, err
	}
	insecure := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	defer insecure.CloseIdleConnections()
	portB, err := askWith(ctx, insecure, res.URL+"port")
	if err != nil {
		return nil, fmt.Errorf("ask the backend its port through the edge: %w", err)
	}
	direct := net.JoinHostPort("127.0.0.1", portB)
	backendPID := 0
	if pid, err := askWith(ctx, insecure, res.URL+"pid"); err == nil {
		backendPID, _ = strconv.Atoi(pid)
	}

	ng, err := startNginxTLS(ctx, filepath.Join(dir, "nginx"), direct, res.BackendID, certFile, keyFile)
	if err != nil {
		return nil, err
	}
	defer ng.stop()

	berthURL := "https://" + u.Host + strings.TrimSuffix(u.Path, "/") + "/"
	nginxURL := "https://" + ng.addr + "/"
	negB, err := negotiated(u.Host)
	if err != nil {
		return nil, fmt.Errorf("Berth's edge: %w", err)
	}
	negN, err := negotiated(ng.addr)
	if err != nil {
		return nil, fmt.Errorf("nginx: %w", err)
	}

	const conns = 32
	blocks, block, warm := size(&e.cfg, 5, 1), size(&e.cfg, 2*time.Second, time.Second), size(&e.cfg, 2*time.Second, 0)
	type target struct {
		name, url, addr string
		pids            []int
	}
	targets := []target{
		{"Berth", berthURL, u.Host, []int{srv.PID}},
		{"nginx", nginxURL, ng.addr, ng.pids()},
	}
	for _, t := range targets {
		if warm > 0 {
			if _, err := e.wrk.run(ctx, t.url, 2, conns, warm, "", nil); err != nil {
				return nil, fmt.Errorf("%s: %w", t.name, err)
			}
		}
	}
	type sums struct {
		httpsSums
		hs, hsSecs, hsBusy       float64
		hsCPU, hsClient, backend time.Duration
	}
	got := make([]sums, len(targets))
	for i := range blocks {
		for j := range targets {
			k := j
			if (i+r.n)%2 == 1 {
				k = len(targets) - 1 - j
			}
			t := targets[k]
			if i == 0 && k == 0 {
				r.cpuProfileOf(e, srv, "https", block-time.Second/2)
			}
			var mb *cpuMeter
			if backendPID > 0 {
				mb = meterCPU(backendPID)
			}
			if err := got[k].wrkBlock(ctx, e, t.name, t.url, t.pids, conns, block); err != nil {
				return nil, err
			}
			if mb != nil {
				bu, _ := mb.stop()
				got[k].backend += bu
			}
		}
		for j := range targets {
			k := j
			if (i+r.n)%2 == 0 {
				k = len(targets) - 1 - j
			}
			t := targets[k]
			if i == 0 && k == 0 {
				r.cpuProfileOf(e, srv, "https-handshakes", block-time.Second/2)
			}
			m, mc := meterCPU(t.pids...), meterCPU(os.Getpid())
			n, err := handshakes(ctx, t.addr, 16, block)
			used, _ := m.stop()
			client, busy := mc.stop()
			if err != nil {
				return nil, fmt.Errorf("%s handshakes: %w", t.name, err)
			}
			got[k].hs += float64(n)
			got[k].hsSecs += block.Seconds()
			got[k].hsCPU += used
			got[k].hsClient += client
			got[k].hsBusy += busy * block.Seconds()
		}
	}
	out := newResult()
	const figT, figH = "HTTPS throughput, 32 conns", "TLS handshakes/s, 16 clients"
	b, n := &got[0], &got[1]
	out.values[figT] = RunFigure{Berth: b.reqs / b.secs, Baseline: n.reqs / n.secs}
	out.values[figH] = RunFigure{Berth: b.hs / b.hsSecs, Baseline: n.hs / n.hsSecs}
	perReq := func(cpu time.Duration, count float64) float64 { return us(time.Duration(float64(cpu) / count)) }
	out.notes[figT] = fmt.Sprintf("negotiated: Berth %s, nginx %s (%s, %d workers); CPU per request: Berth %.1f µs, nginx %.1f µs; backend %.1f / %.1f µs; errors Berth %d, nginx %d",
		negB, negN, ng.version, len(ng.pids())-1, perReq(b.cpu, b.reqs), perReq(n.cpu, n.reqs),
		perReq(b.backend, b.reqs), perReq(n.backend, n.reqs), b.errs, n.errs)
	out.notes[figH] = fmt.Sprintf("CPU per handshake, server side: Berth %.0f µs, nginx %.0f µs; clients' (this process): %.0f / %.0f µs; machine busy %.0f %% / %.0f %%",
		perReq(b.hsCPU, b.hs), perReq(n.hsCPU, n.hs), perReq(b.hsClient, b.hs), perReq(n.hsClient, n.hs), 100*b.hsBusy/b.hsSecs, 100*n.hsBusy/n.hsSecs)
	return out, nil
}

func askWith(ctx context.Context, c *http.Client, u string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", err
	}
	res, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", res.Status, b)
	}
	return strings.TrimSpace(string(b)), nil
}

// clientTLS is what a handshake client offers: X25519 only (what wrk's
// OpenSSL offers too), and resumption, as browsers do, from a session
// cache of its own that holds nothing (a full handshake). Offering it is
// what makes Go's server issue a session ticket (it sends none to a
// client without psk_key_exchange_modes); OpenSSL issues one either way.
func clientTLS() *tls.Config {
	return &tls.Config{InsecureSkipVerify: true, CurvePreferences: []tls.CurveID{tls.X25519}, NextProtos: []string{"http/1.1"},
		ClientSessionCache: tls.NewLRUClientSessionCache(1)}
}

// negotiated describes the TLS parameters addr picks for clientTLS.
func negotiated(addr string) (string, error) {
	c, err := tls.Dial("tcp", addr, clientTLS())
	if err != nil {
		return "", err
	}
	defer c.Close()
	st := c.ConnectionState()
	return fmt.Sprintf("%s %s %s", tls.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite), st.CurveID), nil
}

// handshakes counts the full handshakes clients concurrent clients complete
// with addr in d.
func handshakes(ctx context.Context, addr string, clients int, d time.Duration) (int64, error) {
	var n atomic.Int64
	var firstErr atomic.Value
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dialer := &net.Dialer{Timeout: 5 * time.Second}
			for time.Now().Before(deadline) && ctx.Err() == nil {
				c, err := tls.DialWithDialer(dialer, "tcp", addr, clientTLS())
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				n.Add(1)
				c.Close()
			}
		}()
	}
	wg.Wait()
	if n.Load() == 0 {
		if err, _ := firstErr.Load().(error); err != nil {
			return 0, err
		}
	}
	return n.Load(), ctx.Err()
}

// startNginxTLS starts nginx terminating TLS with the certificate, for
// TLS 1.2 and 1.3 with the one suite Berth's Go server picks for these
// clients, and proxying to upstream with the headers Berth's proxy adds.
func startNginxTLS(ctx context.Context, dir, upstream, backendID, certFile, keyFile string) (*nginxServer, error) {
	bin, err := findNginx()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	conf := fmt.Sprintf(`# generated by berth bench (https)
daemon off;
master_process on;
worker_processes auto;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path %[1]s/client_body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
    keepalive_requests 1000000;
    upstream backend { server %[3]s; keepalive 256; }
    server {
        listen %[2]s ssl;
        ssl_certificate %[7]s;
        ssl_certificate_key %[8]s;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256;
        ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;
        ssl_ecdh_curve X25519:prime256v1;
        ssl_session_tickets on;
        ssl_conf_command NumTickets 1;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Berth-Backend %[4]s;
            proxy_set_header X-Berth-User %[5]s;
            proxy_set_header X-Berth-Secret %[6]s;
        }
    }
}
`, dir, addr, upstream, backendID, liveUser, strings.Repeat("0", secretLen), certFile, keyFile)
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	n, err := runNginx(bin, dir, confPath, addr)
	if err != nil {
		return nil, err
	}
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, Timeout: 2 * time.Second}
	defer c.CloseIdleConnections()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := askWith(ctx, c, "https://"+addr+"/port")
		if err == nil {
			return n, nil
		}
		select {
		case <-n.done:
			return nil, fmt.Errorf("nginx exited at start:\n%s", tail(filepath.Join(dir, "error.log"), 2000))
		case <-ctx.Done():
			n.stop()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			n.stop()
			return nil, fmt.Errorf("nginx (TLS) did not answer within 10s (%v):\n%s", err, tail(filepath.Join(dir, "error.log"), 2000))
		}
	}
}

// httpsSums adds up an HTTPS throughput figure's blocks for one server.
type httpsSums struct {
	reqs, secs float64
	cpu        time.Duration // the server's
	errs       int64
}

// wrkBlock runs one block of wrk against url (with headers), metering the
// CPU of pids, the server's processes, and adds it to s.
func (s *httpsSums) wrkBlock(ctx context.Context, e *env, name, url string, pids []int, conns int, block time.Duration, headers ...string) error {
	m := meterCPU(pids...)
	lr, err := e.wrk.run(ctx, url, 2, conns, block, "", nil, headers...)
	used, _ := m.stop()
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if lr.Requests == 0 {
		return fmt.Errorf("%s: no successful HTTPS requests (%d non-2xx, %d errors)", name, lr.Non2xx, lr.Errors)
	}
	secs := max(time.Second, block.Round(time.Second)).Seconds()
	s.reqs += lr.Requests * secs
	s.secs += secs
	s.cpu += used
	s.errs += lr.Non2xx + lr.Errors
	return nil
}

// skipNoHTTPSLoad says why the HTTPS scenarios cannot run here: they need
// wrk for the load and nginx for the baseline.
func skipNoHTTPSLoad(ctx context.Context, e *env) string {
	if e.wrk == nil {
		return "wrk is not installed (apt-get install wrk): the HTTPS load needs it"
	}
	if _, err := findNginx(); err != nil {
		return err.Error()
	}
	return ""
}
