package e2e

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// need fails the test in CI and skips it elsewhere, saying how to get what
// is missing.
func need(t *testing.T, what, howto string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is missing (CI is set, so this fails instead of skipping); install it with: %s", what, howto)
	}
	t.Skipf("%s is missing; install it with: %s", what, howto)
}

func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	need(t, "chromium", "apt-get install -y chromium")
	return ""
}

// TestDemoInBrowser is the newcomer's first run: berth dev with its demo,
// <api>/demo open in two tabs of a real browser, typing in one shows up in
// the other.
func TestDemoInBrowser(t *testing.T) {
	t.Parallel()
	exe := chromium(t)
	s := start(t, opts{demo: true})

	ctx := testCtx(t, 60*time.Second)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx, append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe),
		chromedp.NoSandbox, // tests run as root in CI
		chromedp.DisableGPU,
		chromedp.UserDataDir(t.TempDir()),
	)...)
	defer cancelAlloc()
	tab1, cancel1 := chromedp.NewContext(allocCtx, chromedp.WithErrorf(t.Logf))
	defer cancel1()
	if err := chromedp.Do(tab1); err != nil { // starts the browser
		t.Fatalf("start chromium: %v", err)
	}
	tab2, cancel2 := chromedp.NewContext(tab1) // a second tab, same browser
	defer cancel2()

	open := func(tab context.Context, name string) {
		t.Helper()
		err := chromedp.Do(tab,
			chromedp.Navigate(s.API+"/demo"),
			chromedp.WaitVisible(chromedp.CSS(`#status[data-state="live"]`)),
		)
		if err != nil {
			t.Fatalf("%s: open %s/demo and wait for the notepad to go live: %v", name, s.API, err)
		}
		url, err := chromedp.Run(tab, chromedp.Location())
		if err != nil {
			t.Fatalf("%s: location: %v", name, err)
		}
		if !strings.HasPrefix(url, s.Proxy+"/") {
			t.Errorf("%s: /demo led to %q, want a page under the proxy %s/", name, url, s.Proxy)
		}
	}
	open(tab1, "tab 1")
	open(tab2, "tab 2")

	const typed = "hello from tab one"
	if err := chromedp.Do(tab1, chromedp.SendKeys(chromedp.CSS("#text"), typed)); err != nil {
		t.Fatalf("type into tab 1: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := chromedp.Run(tab2, chromedp.Value(chromedp.CSS("#text")))
		if err != nil {
			t.Fatalf("read tab 2: %v", err)
		}
		if strings.Contains(got, typed) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("tab 2 shows %q; want the text typed in tab 1, %q", got, typed)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
