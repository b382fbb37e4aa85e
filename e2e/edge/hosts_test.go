package edge

import (
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth/proxy"
)

// TestEdge_HostRouting reaches backends by hostname over HTTPS through a
// real berth serve, with a certificate Pebble issued: the first URL's token
// becomes a cookie, absolute paths then reach the backend, and the host
// routing's refusals hold.
func TestEdge_HostRouting(t *testing.T) {
	b := startEdgeBerth(t)
	roots := b.Pebble.IssuerRoots(t)
	c := b.httpsClient(t, roots)
	a, other := b.connect(t, "doc-a"), b.connect(t, "doc-b")
	ua, _ := url.Parse(a.URL)
	ub, _ := url.Parse(other.URL)
	if !strings.HasSuffix(ua.Hostname(), "."+suffix) || ua.Scheme != "https" || strings.Contains(ua.Host, "doc-a") {
		t.Fatalf("connect URL %s: want https://<label>.%s/… without the key", a.URL, suffix)
	}
	if ua.Hostname() == ub.Hostname() {
		t.Fatalf("two backends share the host %s", ua.Hostname())
	}

	get := func(u string, cookie string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, u, nil)
		if cookie != "" {
			req.Header.Set("Cookie", cookie)
		}
		res, err := c.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", u, err)
		}
		defer res.Body.Close()
		body, _ := io.ReadAll(res.Body)
		return res, string(body)
	}
	res, _ := get(a.URL, "")
	if res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != "/" || res.ProtoMajor != 2 {
		t.Fatalf("first URL: %s %s to %q, want HTTP/2 303 to /", res.Proto, res.Status, res.Header.Get("Location"))
	}
	var cookieA string
	for _, ck := range res.Cookies() {
		if ck.Name == proxy.CookieName && ck.Secure && ck.HttpOnly && ck.SameSite == http.SameSiteLaxMode && ck.Domain == "" {
			cookieA = ck.Name + "=" + ck.Value
		}
	}
	if cookieA == "" {
		t.Fatalf("no Secure, HttpOnly, SameSite=Lax, host-only cookie in %v", res.Header["Set-Cookie"])
	}
	res, body := get("https://"+ua.Host+"/abs/page?x=1", cookieA+"; app=1")
	if res.StatusCode != 200 || !strings.Contains(body, `<p id="path">/abs/page?x=1</p>`) || !strings.Contains(body, `<p id="proto">https</p>`) ||
		!strings.Contains(body, `<p id="cookie">app=1</p>`) || !strings.Contains(body, a.BackendID) {
		t.Errorf("absolute path with the cookie: %d %s", res.StatusCode, body)
	}

	// Refusals.
	label, _, _ := strings.Cut(ua.Hostname(), ".")
	// The label with its last character changed: a label no backend has.
	last := byte('a')
	if label[len(label)-1] == last {
		last = 'b'
	}
	forged := label[:len(label)-1] + string(last)
	if res, _ := get("https://"+forged+"."+suffix+":"+ua.Port()+"/", cookieA); res.StatusCode != http.StatusUnauthorized {
		t.Errorf("forged label: %d, want 401", res.StatusCode)
	}
	if res, _ := get("https://"+ub.Host+"/abs/page", cookieA); res.StatusCode != http.StatusUnauthorized {
		t.Errorf("A's cookie on B's host: %d, want 401", res.StatusCode)
	}
	if res, _ := get("https://"+ub.Host+"/abs/page", ""); res.StatusCode != http.StatusUnauthorized {
		t.Errorf("B's host without a cookie: %d, want 401", res.StatusCode)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := b.Client.Terminate(ctx, a.BackendID, true); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		res, body := get("https://"+ua.Host+"/abs/page", cookieA)
		if res.StatusCode == http.StatusGone {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("terminated backend's host: %d %s, want 410", res.StatusCode, body)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Plain HTTP redirects to HTTPS.
	hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, _ := http.NewRequest(http.MethodGet, "http://"+b.HTTPAddr+"/abs/page", nil)
	req.Host = ub.Hostname()
	res, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if want := "https://" + ub.Host + "/abs/page"; res.StatusCode != http.StatusPermanentRedirect || res.Header.Get("Location") != want {
		t.Errorf("HTTP: %d to %q, want 308 to %q", res.StatusCode, res.Header.Get("Location"), want)
	}
}

// TestEdge_OnDemandCertificates: without a DNS provider, each backend's
// host gets a certificate at its first handshake, and only hosts Berth
// named: a forged label gets none.
func TestEdge_OnDemandCertificates(t *testing.T) {
	b := startACMEBerth(t, false)
	roots := b.Pebble.IssuerRoots(t)
	resp := b.connect(t, "on-demand")
	u, _ := url.Parse(resp.URL)
	c, err := tls.Dial("tcp", b.TLSAddr, &tls.Config{RootCAs: roots, ServerName: u.Hostname()})
	if err != nil {
		t.Fatalf("first handshake for %s: %v", u.Hostname(), err)
	}
	if names := c.ConnectionState().PeerCertificates[0].DNSNames; len(names) != 1 || names[0] != u.Hostname() {
		t.Errorf("certificate for %v, want %s alone", names, u.Hostname())
	}
	c.Close()
	label, _, _ := strings.Cut(u.Hostname(), ".")
	forged := "zzzzzzzzzzzzzzzz" + label[16:] + "." + suffix
	if c, err := tls.Dial("tcp", b.TLSAddr, &tls.Config{RootCAs: roots, ServerName: forged}); err == nil {
		c.Close()
		t.Errorf("a certificate was obtained for the forged host %s", forged)
	}
	res, body := func() (*http.Response, string) {
		res, err := b.httpsClient(t, roots).Get(resp.URL)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		bb, _ := io.ReadAll(res.Body)
		return res, string(bb)
	}()
	if res.StatusCode != http.StatusSeeOther {
		t.Errorf("first URL over the on-demand certificate: %d %s", res.StatusCode, body)
	}
}
