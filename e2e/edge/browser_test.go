package edge

import (
	"context"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/storage"
	"github.com/chromedp/chromedp"

	"github.com/berthhq/berth/proxy"
)

// browser is one headless Chromium tab that trusts root (added to the NSS
// database of a home of its own, as an operator would) and resolves every
// *.berth.test to loopback.
type browser struct{ tab context.Context }

func startBrowser(t *testing.T, rootPEM []byte) *browser {
	t.Helper()
	exe := ""
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			exe = p
			break
		}
	}
	if exe == "" {
		need(t, "chromium", "apt-get install -y chromium")
	}
	certutil, err := exec.LookPath("certutil")
	if err != nil {
		need(t, "certutil", "apt-get install -y libnss3-tools")
	}
	home := t.TempDir()
	db := filepath.Join(home, ".pki", "nssdb")
	root := filepath.Join(home, "pebble-root.pem")
	if err := os.MkdirAll(db, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(root, rootPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"-d", "sql:" + db, "-N", "--empty-password"},
		{"-d", "sql:" + db, "-A", "-n", "pebble-root", "-t", "C,,", "-i", root},
	} {
		if out, err := exec.Command(certutil, args...).CombinedOutput(); err != nil {
			t.Fatalf("certutil %v: %v: %s", args, err, out)
		}
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe),
		chromedp.NoSandbox, // tests run as root in CI
		chromedp.DisableGPU,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Env("HOME="+home),
		chromedp.Flag("host-resolver-rules", "MAP *."+suffix+" 127.0.0.1"),
	)...)
	t.Cleanup(cancelAlloc)
	tab, cancel := chromedp.NewContext(allocCtx, chromedp.WithErrorf(t.Logf))
	t.Cleanup(cancel)
	if err := chromedp.Do(tab); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return &browser{tab: tab}
}

func (br *browser) do(t *testing.T, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(br.tab, 20*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// navigate opens u and waits for sel (if any), again when Chromium drops
// the load for a network change: other tests on the machine create and
// remove Docker networks, which Chromium notices.
func (br *browser) navigate(t *testing.T, what, u string, sel ...string) {
	t.Helper()
	steps := []chromedp.Action[chromedp.Void]{chromedp.Navigate(u)}
	for _, id := range sel {
		steps = append(steps, chromedp.WaitVisible(chromedp.ID(id)))
	}
	for attempt := 0; ; attempt++ {
		ctx, cancel := context.WithTimeout(br.tab, 20*time.Second)
		err := chromedp.Do(ctx, steps...)
		cancel()
		if err == nil {
			return
		}
		if attempt < 3 && strings.Contains(err.Error(), "ERR_NETWORK_CHANGED") {
			t.Logf("%s: %v; again", what, err)
			continue
		}
		t.Fatalf("%s: %v", what, err)
	}
}

// follow clicks the link with id link on the page at from and waits for
// id want on the page it leads to, again (from from) when Chromium drops
// that load for a network change, as navigate does: the click's load has
// no error to report, so a page that ends on Chromium's error page is how
// it shows.
func (br *browser) follow(t *testing.T, what, from, link, want string) {
	t.Helper()
	for attempt := 0; ; attempt++ {
		ctx, cancel := context.WithTimeout(br.tab, 20*time.Second)
		err := chromedp.Do(ctx, chromedp.Click(chromedp.ID(link)))
		var where string
		for err == nil {
			// "ok" on the page wanted, "error" on Chromium's error page.
			where, err = chromedp.Run(ctx, chromedp.Evaluate[string](`document.getElementById(`+strconv.Quote(want)+`) ? "ok" :
				(location.protocol === "chrome-error:" || (document.body && document.body.innerText.includes("ERR_NETWORK_CHANGED"))) ? "error" : "wait"`))
			if err != nil || where != "wait" {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		cancel()
		switch {
		case err == nil && where == "ok":
			return
		case attempt < 3 && (where == "error" || err != nil && strings.Contains(err.Error(), "ERR_NETWORK_CHANGED")):
			t.Logf("%s: the load was dropped (%v); again", what, err)
			br.navigate(t, what+": back", from, link)
		case err == nil:
			t.Fatalf("%s: the browser shows its error page", what)
		default:
			t.Fatalf("%s: %v", what, err)
		}
	}
}

func eval[T any](t *testing.T, br *browser, expr string) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(br.tab, 20*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// berthCookies returns the browser's Berth cookies by domain.
func (br *browser) berthCookies(t *testing.T) map[string]*network.Cookie {
	t.Helper()
	ctx, cancel := context.WithTimeout(br.tab, 10*time.Second)
	defer cancel()
	res, err := chromedp.Call(ctx, storage.GetCookies, storage.GetCookiesParams{})
	if err != nil {
		t.Fatalf("cookies: %v", err)
	}
	out := make(map[string]*network.Cookie)
	for _, c := range res.Cookies {
		if c.Name == proxy.CookieName {
			out[c.Domain] = c
		}
	}
	return out
}

// TestEdge_Browser opens two backends by their hostnames in Chromium over
// HTTPS, with the certificate Pebble issued to berth serve: the token in
// the first URL becomes a cookie for that host only, an absolute-path link
// and a WebSocket reach the backend, and the other backend's host never
// gets the cookie.
func TestEdge_Browser(t *testing.T) {
	b := startEdgeBerth(t)
	br := startBrowser(t, b.Pebble.IssuerRootPEM(t))
	a, other := b.connect(t, "browser-a"), b.connect(t, "browser-b")
	ua, _ := url.Parse(a.URL)
	ub, _ := url.Parse(other.URL)

	br.navigate(t, "open backend A's URL", a.URL, "abs")
	if got := eval[string](t, br, `location.href`); got != "https://"+ua.Host+"/" {
		t.Errorf("after the first URL the page is at %s, want https://%s/ (the token dropped)", got, ua.Host)
	}
	if got := eval[string](t, br, `location.protocol + " " + performance.getEntriesByType("navigation")[0].nextHopProtocol`); got != "https: h2" {
		t.Errorf("page loaded over %q, want HTTPS with HTTP/2", got)
	}
	if got := eval[string](t, br, `document.cookie`); got != "app=1" {
		t.Errorf("document.cookie = %q, want only the app's own (Berth's is HttpOnly)", got)
	}

	br.follow(t, "follow the absolute-path link", "https://"+ua.Host+"/", "abs", "path")
	if got := eval[string](t, br, `document.getElementById("path").textContent`); got != "/abs/page?x=1" {
		t.Errorf("the backend saw path %q, want /abs/page?x=1", got)
	}
	if got := eval[string](t, br, `document.getElementById("cookie").textContent`); got != "app=1" {
		t.Errorf("the backend got cookies %q, want only app=1", got)
	}
	if got := eval[string](t, br, `document.getElementById("backend").textContent`); got != a.BackendID {
		t.Errorf("served by %q, want backend A %s", got, a.BackendID)
	}

	msg := eval[string](t, br, `new Promise((resolve, reject) => {
		const ws = new WebSocket("wss://" + location.host + "/ws");
		ws.onopen = () => ws.send("hello");
		ws.onmessage = e => { resolve(e.data); ws.close(); };
		ws.onerror = () => reject(new Error("websocket failed"));
		setTimeout(() => reject(new Error("websocket timed out")), 10000);
	})`)
	if !strings.Contains(msg, a.BackendID) || !strings.HasSuffix(msg, "echo hello") {
		t.Errorf("WebSocket answer %q, want backend A's echo", msg)
	}

	cookies := br.berthCookies(t)
	ca := cookies[ua.Hostname()]
	if ca == nil || len(cookies) != 1 {
		t.Fatalf("Berth cookies %v, want one, for %s", cookies, ua.Hostname())
	}
	if !ca.Secure || !ca.HTTPOnly || ca.SameSite != network.CookieSameSiteLax || ca.Path != "/" {
		t.Errorf("cookie %+v: want Secure, HttpOnly, SameSite=Lax, Path=/", ca)
	}

	// B's host without its first URL: the browser sends no cookie there.
	br.navigate(t, "open B's host directly", "https://"+ub.Host+"/abs/page")
	if got := eval[string](t, br, `document.body.innerText`); !strings.Contains(got, "missing token") {
		t.Errorf("B's host without B's token answered %q, want 401 missing token", got)
	}
	br.navigate(t, "open backend B's URL", other.URL, "abs")
	br.navigate(t, "B's absolute path", "https://"+ub.Host+"/abs/page", "backend")
	if got := eval[string](t, br, `document.getElementById("backend").textContent`); got != other.BackendID {
		t.Errorf("B's host served by %q, want %s", got, other.BackendID)
	}
	cookies = br.berthCookies(t)
	if len(cookies) != 2 || cookies[ub.Hostname()] == nil || cookies[ub.Hostname()].Value == ca.Value {
		t.Errorf("after visiting B: cookies %v, want one per host, each its own", cookies)
	}

	// A's page still works with A's cookie.
	br.navigate(t, "back to A", "https://"+ua.Host+"/abs/page", "backend")
	if got := eval[string](t, br, `document.getElementById("backend").textContent`); got != a.BackendID {
		t.Errorf("A's host served by %q, want %s", got, a.BackendID)
	}
}
