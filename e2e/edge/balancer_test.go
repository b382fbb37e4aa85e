package edge

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berthhq/berth/api"
	"github.com/berthhq/berth/internal/testbin"
	"github.com/berthhq/berth/proxy"
)

// startPlainEdge runs berth serve with its edge in plain HTTP
// (--proxy-http-addr, no certificate), as behind a balancer, with
// --public-host-suffix and extra flags.
func startPlainEdge(t *testing.T, extra ...string) (b *edgeBerth) {
	t.Helper()
	dir := t.TempDir()
	apiAddr, proxyAddr, backendAddr, httpAddr := testbin.FreeAddr(t), testbin.FreeAddr(t), testbin.FreeAddr(t), testbin.FreeAddr(t)
	b = &edgeBerth{API: "http://" + apiAddr, HTTPAddr: httpAddr, Key: "edge-test-key"}
	b.Client = newClient(t, b.API, b.Key)
	args := append([]string{"serve",
		"--api-addr", apiAddr, "--proxy-addr", proxyAddr, "--backend-api-addr", backendAddr,
		"--data-dir", dir, "--runtime", "process", "--api-key", b.Key, "--log-level", "debug",
		"--proxy-http-addr", httpAddr, "--public-host-suffix", suffix, "--public-url", "https://" + suffix,
	}, extra...)
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
			cmd.Process.Signal(syscall.SIGKILL)
			<-done
			t.Errorf("berth did not exit within 60s of SIGINT")
		}
		if t.Failed() {
			t.Logf("berth output:\n%s", b.out.String())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		res, err := http.Get(b.API + "/healthz")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == 200 {
				return b
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("berth did not answer /healthz: %v\n%s", err, b.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// rawExchange sends prefix and one request for path on host with headers
// on a new connection to addr and returns the response and its body.
func rawExchange(t *testing.T, addr string, prefix, host, path string, hdr ...string) (*http.Response, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var sb strings.Builder
	sb.WriteString(prefix)
	fmt.Fprintf(&sb, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n", path, host)
	for i := 0; i+1 < len(hdr); i += 2 {
		fmt.Fprintf(&sb, "%s: %s\r\n", hdr[i], hdr[i+1])
	}
	sb.WriteString("\r\n")
	if _, err := io.WriteString(c, sb.String()); err != nil {
		t.Fatal(err)
	}
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	return res, string(body)
}

// firstVisit makes the first request on resp's URL through addr (after
// prefix) and returns the host and the Berth cookie it set.
func firstVisit(t *testing.T, addr, prefix string, resp *api.ConnectResponse, hdr ...string) (host, cookie string) {
	t.Helper()
	u, _ := url.Parse(resp.URL)
	res, body := rawExchange(t, addr, prefix, u.Host, u.Path, hdr...)
	if res.StatusCode != http.StatusSeeOther {
		t.Fatalf("first URL: %d %s", res.StatusCode, body)
	}
	for _, c := range res.Cookies() {
		if c.Name == proxy.CookieName {
			return u.Host, c.Name + "=" + c.Value
		}
	}
	t.Fatalf("no Berth cookie in %v", res.Header["Set-Cookie"])
	return "", ""
}

// TestEdge_BehindL7 is berth serve behind an L7 balancer that terminates
// TLS (the balancer here is the test, on loopback): the balancer's
// X-Forwarded-For and -Proto are believed, the client's own are not, and
// the rate limit counts the client the balancer names.
func TestEdge_BehindL7(t *testing.T) {
	b := startPlainEdge(t, "--trusted-proxies", "127.0.0.1/32", "--edge-rate", "1", "--edge-burst", "4")
	resp := b.connect(t, "l7")
	if !strings.HasPrefix(resp.URL, "https://") || !strings.Contains(resp.URL, "."+suffix+"/") {
		t.Fatalf("connect URL %s: want https://<label>.%s/…", resp.URL, suffix)
	}
	host, cookie := firstVisit(t, b.HTTPAddr, "", resp, "X-Forwarded-For", "203.0.113.7", "X-Forwarded-Proto", "https")
	res, body := rawExchange(t, b.HTTPAddr, "", host, "/abs/page",
		"Cookie", cookie, "X-Forwarded-For", "198.51.100.1, 203.0.113.7", "X-Forwarded-Proto", "https")
	if res.StatusCode != 200 || !strings.Contains(body, `<p id="xff">203.0.113.7</p>`) || !strings.Contains(body, `<p id="proto">https</p>`) {
		t.Errorf("through the balancer: %d %s; want the backend told 203.0.113.7 over https", res.StatusCode, body)
	}
	// Another client behind the balancer has a bucket of its own; the
	// first one, over its burst, gets 429.
	limited := false
	for range 6 {
		res, _ := rawExchange(t, b.HTTPAddr, "", host, "/abs/page", "Cookie", cookie, "X-Forwarded-For", "203.0.113.7", "X-Forwarded-Proto", "https")
		if res.StatusCode == http.StatusTooManyRequests {
			limited = res.Header.Get("Retry-After") != ""
			break
		}
	}
	if !limited {
		t.Error("client 203.0.113.7 over its burst of 4 at 1/s was never answered 429 with Retry-After")
	}
	if res, body := rawExchange(t, b.HTTPAddr, "", host, "/abs/page", "Cookie", cookie, "X-Forwarded-For", "203.0.113.8", "X-Forwarded-Proto", "https"); res.StatusCode != 200 {
		t.Errorf("another client: %d %s, want 200", res.StatusCode, body)
	}
	metrics := get(t, b.API+"/metrics", b.Key)
	if !strings.Contains(metrics, `berth_edge_rejected_total{reason="rate_limit"}`) {
		t.Errorf("/metrics lacks berth_edge_rejected_total{reason=\"rate_limit\"}")
	}
}

// TestEdge_BehindL4 is berth serve behind an L4 balancer that sends the
// PROXY protocol: the header names the client; forwarded headers from the
// client are not believed.
func TestEdge_BehindL4(t *testing.T) {
	b := startPlainEdge(t, "--proxy-protocol", "--trusted-proxies", "127.0.0.1/32")
	resp := b.connect(t, "l4")
	v1 := "PROXY TCP4 192.0.2.44 10.0.0.1 40000 80\r\n"
	host, cookie := firstVisit(t, b.HTTPAddr, v1, resp)
	res, body := rawExchange(t, b.HTTPAddr, v1, host, "/abs/page", "Cookie", cookie, "X-Forwarded-For", "6.6.6.6", "X-Forwarded-Proto", "https")
	if res.StatusCode != 200 || !strings.Contains(body, `<p id="xff">192.0.2.44</p>`) || !strings.Contains(body, `<p id="proto">http</p>`) {
		t.Errorf("through PROXY v1: %d %s; want the backend told 192.0.2.44 over http (the client's own headers ignored)", res.StatusCode, body)
	}
	if res, body := rawExchange(t, b.HTTPAddr, "", host, "/abs/page", "Cookie", cookie); res.StatusCode != http.StatusBadRequest {
		t.Errorf("without a PROXY header: %d %s, want 400", res.StatusCode, body)
	}
}

func get(t *testing.T, u, key string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	req.Header.Set("Authorization", "Bearer "+key)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return string(b)
}
