package ui

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/berthhq/berth/api"
	"github.com/berthhq/berth/api/apitest"
	"github.com/berthhq/berth/internal/testbin"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// bin holds the binaries TestMain builds once.
var bin struct{ berth, testbackend string }

// servers are the running Berths by control API host:port, so each answer
// the OpenAPI document does not describe fails the test that started it.
var servers = struct {
	sync.Mutex
	m map[string]*server
}{m: map[string]*server{}}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "berth-ui-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e/ui:", err)
		os.Exit(1)
	}
	code := 1
	bins, err := testbin.Build(dir)
	var doc *apitest.Doc
	if err == nil {
		doc, err = apitest.Load(context.Background(), api.OpenAPI)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e/ui:", err)
	} else {
		bin.berth, bin.testbackend = bins.Berth, bins.TestBackend
		// Every answer of a control API this suite started is checked
		// against api/openapi.json: the test's own calls, and the page's
		// through the proxy each server puts in front of its API (UI).
		http.DefaultTransport = &apitest.Transport{Base: http.DefaultTransport, Doc: doc, For: func(req *http.Request) func(error) {
			servers.Lock()
			defer servers.Unlock()
			if s := servers.m[req.URL.Host]; s != nil {
				return s.mismatch
			}
			return nil
		}}
		code = m.Run()
	}
	os.RemoveAll(dir)
	os.Exit(code)
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

// server is one running `berth serve` with an API key.
type server struct {
	API, Proxy string
	// UI is the address the browser opens: a reverse proxy to API whose
	// answers are checked against the OpenAPI document, so the dashboard's
	// requests (its event streams and followed logs included) are too.
	UI     string
	Key    string
	Client *api.Client
	out    testbin.SyncBuffer

	mu         sync.Mutex
	mismatches []error
	pageCalls  []string // "METHOD /path" of each request the page made through UI
}

// calls returns how many requests the page has made, and the last ones.
func (b *server) calls() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.pageCalls)
}

func (b *server) mismatch(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.mismatches = append(b.mismatches, err)
}

// startBerth runs berth serve (process runtime) on free loopback ports and
// a fresh data dir, waits for /healthz, and stops it at cleanup, requiring
// a clean exit.
func startBerth(t *testing.T) *server {
	t.Helper()
	dir := t.TempDir()
	apiAddr, proxyAddr, backendAddr := testbin.FreeAddr(t), testbin.FreeAddr(t), testbin.FreeAddr(t)
	b := &server{API: "http://" + apiAddr, Proxy: "http://" + proxyAddr, Key: "ui-test-key-" + filepath.Base(dir)}
	b.Client = api.NewClient(b.API, b.Key, nil)
	servers.Lock()
	servers.m[apiAddr] = b
	servers.Unlock()
	u, err := url.Parse(b.API)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(u) // through http.DefaultTransport, checked
	rp.FlushInterval = -1                       // event streams and followed logs as they come
	ui := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		b.pageCalls = append(b.pageCalls, r.Method+" "+r.URL.Path)
		b.mu.Unlock()
		rp.ServeHTTP(w, r)
	}))
	b.UI = ui.URL
	t.Cleanup(func() {
		// Registered before the stop below, so it runs after it: every
		// stream has ended and every answer has been checked.
		ui.Close()
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, err := range b.mismatches {
			t.Errorf("control API answer does not match api/openapi.json: %v", err)
		}
		servers.Lock()
		delete(servers.m, apiAddr)
		servers.Unlock()
	})
	cmd := exec.Command(bin.berth, "serve",
		"--api-addr", apiAddr, "--proxy-addr", proxyAddr, "--backend-api-addr", backendAddr,
		"--data-dir", dir, "--runtime", "process", "--api-key", b.Key, "--log-level", "debug")
	cmd.Dir = dir
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "BERTH_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
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
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(b.API + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return b
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("berth did not answer %s/healthz within 20s (%v)\n%s", b.API, err, b.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// browser is one Chromium tab, at a laptop's window size.
type browser struct {
	tab context.Context
	mu  sync.Mutex
	// exceptions are the page's uncaught JavaScript errors.
	exceptions []string
}

func startBrowser(t *testing.T) *browser {
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
	// Not t.Context(): that ends before cleanups, which take screenshots.
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe),
		chromedp.NoSandbox, // tests run as root in CI
		chromedp.DisableGPU,
		chromedp.WindowSize(1280, 800),
		chromedp.UserDataDir(t.TempDir()),
	)...)
	t.Cleanup(cancelAlloc)
	tab, cancel := chromedp.NewContext(allocCtx, chromedp.WithErrorf(t.Logf))
	t.Cleanup(cancel)
	if err := chromedp.Do(tab); err != nil { // starts the browser
		t.Fatalf("start chromium: %v", err)
	}
	br := &browser{tab: tab}
	err := chromedp.Listen(tab, func(ev any) {
		if e, ok := ev.(*runtime.EventExceptionThrown); ok {
			msg := e.ExceptionDetails.Text
			if e.ExceptionDetails.Exception != nil {
				msg += " " + e.ExceptionDetails.Exception.Description
			}
			br.mu.Lock()
			br.exceptions = append(br.exceptions, msg)
			br.mu.Unlock()
		}
	})
	if err != nil {
		t.Fatalf("listen to the page: %v", err)
	}
	return br
}

// watch fails t if the page throws while t runs, and saves a screenshot
// of the page if t fails.
func (br *browser) watch(t *testing.T) {
	br.mu.Lock()
	before := len(br.exceptions)
	br.mu.Unlock()
	t.Cleanup(func() {
		br.mu.Lock()
		for _, e := range br.exceptions[before:] {
			t.Errorf("the page threw: %s", e)
		}
		br.mu.Unlock()
		if t.Failed() {
			br.screenshot(t)
		}
	})
}

// screenshot saves the page as a PNG in $BERTH_TEST_ARTIFACTS (else
// <tmp>/berth-ui-artifacts) and logs where.
func (br *browser) screenshot(t *testing.T) {
	dir := os.Getenv("BERTH_TEST_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "berth-ui-artifacts")
	}
	ctx, cancel := context.WithTimeout(br.tab, 10*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err == nil {
		err = os.MkdirAll(dir, 0o755)
	}
	path := filepath.Join(dir, regexp.MustCompile(`[^A-Za-z0-9._-]+`).ReplaceAllString(t.Name(), "_")+".png")
	if err == nil {
		err = os.WriteFile(path, png, 0o644)
	}
	if err != nil {
		t.Logf("screenshot of the failed page: %v", err)
		return
	}
	t.Logf("screenshot of the failed page: %s", path)
}

// do runs steps in the tab, failing t after 20 s or on an error.
func (br *browser) do(t *testing.T, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(br.tab, 20*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// waitFor polls a JavaScript expression until it is truthy.
func (br *browser) waitFor(t *testing.T, what, expr string) {
	t.Helper()
	br.do(t, what, chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingInterval(25*time.Millisecond), chromedp.WithPollingTimeout(15*time.Second)))
}

// eval evaluates a JavaScript expression (awaiting a promise) in the page.
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
