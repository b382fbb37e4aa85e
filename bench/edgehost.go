package bench

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"github.com/berthhq/berth/proxy"
)

// The edge's HTTPS for a backend reached by its hostname
// (--public-host-suffix): the later requests of a session, which carry the
// backend's cookie and a plain path, against nginx terminating TLS in
// front of the same backend, as the https scenario measures the
// path-prefix mode; that mode is measured on the same server in the same
// blocks, for the note.

const benchHostSuffix = "bench.test"

func init() {
	scenarios = append(scenarios, &scenario{
		name:    "https-host",
		summary: "the edge's HTTPS throughput for a backend reached by its hostname (cookie session), vs nginx terminating TLS to the same backend",
		figures: []figureSpec{
			{name: "HTTPS by hostname, 32 conns", unit: "/s", baseline: "nginx", target: target{ratioAtLeast, 1.0},
				method: "GET / of the bench backend over 32 keep-alive HTTPS (HTTP/1.1, TLS 1.3) connections from wrk to 127.0.0.1 with Host: <label>." + benchHostSuffix + " and the backend's __Host-berth cookie, through Berth's edge (--public-host-suffix " + benchHostSuffix + ", limits off) and through nginx (as in https, sent the same headers) to the same backend process; 2 s warm-up each, then 5 blocks of 2 s each, taking turns with the same server's path-prefix URL (in the note); median of the runs"},
		},
		skip: skipNoHTTPSLoad,
		run:  runHTTPSHost,
	})
}

func runHTTPSHost(ctx context.Context, e *env, r *runCtx) (*result, error) {
	es, err := e.startEdgeServer(ctx, fmt.Sprintf("edge-host-%d", r.n), "bench-https-host", "--public-host-suffix", benchHostSuffix)
	defer es.stop()
	if err != nil {
		return nil, err
	}
	dir, certFile, keyFile, tlsAddr, srv, res := es.dir, es.certFile, es.keyFile, es.tlsAddr, es.srv, es.res
	// https://<label>.bench.test:PORT/<token>/
	u, err := url.Parse(res.URL)
	if err != nil {
		return nil, err
	}
	tok := strings.Trim(u.Path, "/")
	if !strings.HasSuffix(u.Hostname(), "."+benchHostSuffix) || tok == "" || strings.Contains(tok, "/") {
		return nil, fmt.Errorf("connect returned %q, not a URL on a backend's host", res.URL)
	}
	hostHdr, cookieHdr := "Host: "+u.Host, "Cookie: "+proxy.CookieName+"="+tok
	pathURL := "https://" + tlsAddr + "/" + tok + "/" // the same backend, by path (another host)
	insecure := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	defer insecure.CloseIdleConnections()
	portB, err := askWith(ctx, insecure, pathURL+"port")
	if err != nil {
		return nil, fmt.Errorf("ask the backend its port through the edge: %w", err)
	}
	// The host-routed request wrk will make answers 200.
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+tlsAddr+"/port", nil)
	req.Host = u.Host
	req.Header.Set("Cookie", proxy.CookieName+"="+tok)
	if hres, err := insecure.Do(req); err != nil {
		return nil, fmt.Errorf("GET /port by hostname: %w", err)
	} else if hres.Body.Close(); hres.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /port by hostname: %s", hres.Status)
	}
	direct := net.JoinHostPort("127.0.0.1", portB)
	ng, err := startNginxTLS(ctx, filepath.Join(dir, "nginx"), direct, res.BackendID, certFile, keyFile)
	if err != nil {
		return nil, err
	}
	defer ng.stop()
	negB, err := negotiated(tlsAddr)
	if err != nil {
		return nil, fmt.Errorf("Berth's edge: %w", err)
	}

	const conns = 32
	blocks, block, warm := size(&e.cfg, 5, 1), size(&e.cfg, 2*time.Second, time.Second), size(&e.cfg, 2*time.Second, 0)
	type target struct {
		name, url string
		headers   []string
		pids      []int
	}
	targets := []target{
		{"Berth by hostname", "https://" + tlsAddr + "/", []string{hostHdr, cookieHdr}, []int{srv.PID}},
		{"nginx", "https://" + ng.addr + "/", []string{hostHdr, cookieHdr}, ng.pids()},
		{"Berth by path", pathURL, nil, []int{srv.PID}},
	}
	for _, t := range targets {
		if warm > 0 {
			if _, err := e.wrk.run(ctx, t.url, 2, conns, warm, "", nil, t.headers...); err != nil {
				return nil, fmt.Errorf("%s: %w", t.name, err)
			}
		}
	}
	got := make([]httpsSums, len(targets))
	for i := range blocks {
		for j := range targets {
			k := (j + i + r.n) % len(targets) // each takes each place in turn
			t := targets[k]
			if i == 0 && k == 0 {
				r.cpuProfileOf(e, srv, "https-host", block-time.Second/2)
			}
			if err := got[k].wrkBlock(ctx, e, t.name, t.url, t.pids, conns, block, t.headers...); err != nil {
				return nil, err
			}
		}
	}
	out := newResult()
	const fig = "HTTPS by hostname, 32 conns"
	h, n, p := &got[0], &got[1], &got[2]
	out.values[fig] = RunFigure{Berth: h.reqs / h.secs, Baseline: n.reqs / n.secs}
	perReq := func(s *httpsSums) float64 { return us(time.Duration(float64(s.cpu) / s.reqs)) }
	out.notes[fig] = fmt.Sprintf("negotiated: Berth %s; by path on the same server: %.0f/s (by hostname %.2f× that); CPU per request: Berth by hostname %.1f µs, by path %.1f µs, nginx %.1f µs (%s, %d workers); errors %d, %d, %d",
		negB, p.reqs/p.secs, (h.reqs/h.secs)/(p.reqs/p.secs), perReq(h), perReq(p), perReq(n), ng.version, len(ng.pids())-1, h.errs, p.errs, n.errs)
	return out, nil
}
