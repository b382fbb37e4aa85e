package ui

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
)

// TestDashboard drives /ui/ as an operator would, under `berth serve` with
// an API key, in one browser against one Berth: the subtests run in order
// and build on each other (signed in by the first, signed out by the last).
func TestDashboard(t *testing.T) {
	br := startBrowser(t)
	b := startBerth(t)
	br.watch(t)

	t.Run("SignIn", func(t *testing.T) {
		br.watch(t)
		br.do(t, "open /ui/", chromedp.Navigate(b.UI+"/ui/"), chromedp.WaitVisible(chromedp.ID("login-form")))
		if got := eval[bool](t, br, `document.querySelector("#view-list").hidden`); !got {
			t.Errorf("the backend list shows before sign-in")
		}
		br.do(t, "sign in with a wrong key",
			chromedp.SendKeys(chromedp.ID("login-key"), "not-the-key"+kb.Enter))
		br.waitFor(t, "the wrong key's message", `document.querySelector("#login-error").textContent.includes("not this Berth's API key")`)
		br.do(t, "sign in with the key",
			chromedp.Evaluate[chromedp.Void](`document.getElementById("login-key").value = ""`),
			chromedp.SendKeys(chromedp.ID("login-key"), b.Key+kb.Enter),
			chromedp.WaitVisible(chromedp.ID("view-list")))
		br.waitFor(t, "the event stream", `document.querySelector("#conn").dataset.state === "live"`)

		loc := eval[string](t, br, `location.href`)
		if strings.Contains(loc, b.Key) {
			t.Errorf("the API key is in the URL: %s", loc)
		}
		if c := eval[string](t, br, `document.cookie`); c != "" {
			t.Errorf("script can read cookies %q; the session cookie must be HttpOnly", c)
		}
		// The cookie signs the page's requests in; one that changes state
		// also needs the dashboard's header, which another site cannot send.
		if got := eval[int](t, br, `fetch("/v1/backends").then(r => r.status)`); got != http.StatusOK {
			t.Errorf("GET /v1/backends from the signed-in page: %d, want 200", got)
		}
		// Every operation of the document that is not a read, so each
		// must list that 403 (the answers pass through the checking proxy).
		for _, op := range writeOps(t) {
			js := fmt.Sprintf(`fetch(%q, {method: %q}).then(r => r.status)`, op.path, op.method)
			if got := eval[int](t, br, js); got != http.StatusForbidden {
				t.Errorf("%s %s by cookie without X-Berth-UI: %d, want 403", op.method, op.path, got)
			}
		}
	})
	if t.Failed() {
		return // the rest needs a signed-in page
	}

	t.Run("ListIsLive", func(t *testing.T) {
		br.watch(t)
		br.do(t, "mark the document", chromedp.Evaluate[chromedp.Void](`window.sameDocument = true`))
		before := len(b.calls())
		resp := connect(t, b, "live-1", tb(nil), false)
		row := fmt.Sprintf(`document.querySelector('tr[data-id=%q]')`, resp.BackendID)
		br.waitFor(t, "the new backend in the list", row+` !== null`)
		br.waitFor(t, "the backend ready in the list", row+`?.dataset.state === "ready"`)
		if err := b.Client.Terminate(testCtx(t), resp.BackendID, false); err != nil {
			t.Fatal(err)
		}
		br.waitFor(t, "the backend terminated in the list", row+`?.dataset.state === "terminated"`)
		// The row was updated in place (starting, ready, terminated) and
		// still links to its backend.
		if got := eval[string](t, br, row+`.querySelector("td:first-child a.bk")?.textContent ?? "(none)"`); got != resp.BackendID {
			t.Errorf("the updated row's first cell links to %q, want its backend %s", got, resp.BackendID)
		}
		if !eval[bool](t, br, `window.sameDocument === true`) {
			t.Errorf("the page reloaded; changes must arrive in the same document")
		}
		// Pushed over the open event stream, not polled: the page asked
		// nothing while the backend came and went, nor in the 3 s after
		// (a poll every few seconds would show there).
		time.Sleep(3 * time.Second)
		if calls := b.calls(); len(calls) != before {
			t.Errorf("the page made requests while the list followed a backend: %q; changes must come over /v1/events", calls[before:])
		}
		if got := eval[string](t, br, row+`.textContent`); !strings.Contains(got, "live-1") || !strings.Contains(got, "requested") {
			t.Errorf("row %q lacks its key or its reason (requested)", got)
		}

		total := func(name string) int {
			n, err := strconv.Atoi(eval[string](t, br, `document.querySelector('[data-total="`+name+`"] dd').textContent`))
			if err != nil {
				t.Fatalf("total %s: %v", name, err)
			}
			return n
		}
		if total("spawns") < 1 || total("terminations") < 1 {
			t.Errorf("totals: %d spawned, %d terminated in the last hour; want at least 1 each", total("spawns"), total("terminations"))
		}
		for _, series := range []string{"spawns", "ready", "terminations"} {
			if !eval[bool](t, br, `document.querySelector("#plot svg rect.`+series+`") !== null`) {
				t.Errorf("the plot has no bar of %s", series)
			}
		}

		// Filters: by key, state and node, as the operator types and picks.
		setFilter := func(id, value string) {
			br.do(t, "filter "+id, chromedp.Evaluate[chromedp.Void](fmt.Sprintf(
				`{const e = document.getElementById(%q); e.value = %q; e.dispatchEvent(new Event("input"));}`, id, value)))
		}
		shown := func(what string, want bool) {
			t.Helper()
			br.waitFor(t, what, fmt.Sprintf(`(%s !== null) === %v`, row, want))
		}
		br.do(t, "type a key filter", chromedp.SendKeys(chromedp.ID("f-key"), "no-such-key"))
		shown("hidden by a key filter", false)
		if !eval[bool](t, br, `!document.querySelector("#list-empty").hidden`) {
			t.Errorf("no 'no backend matches' note under a filter that matches none")
		}
		setFilter("f-key", "live-")
		shown("shown by a matching key filter", true)
		setFilter("f-state", "ready")
		shown("hidden by state ready", false)
		setFilter("f-state", "terminated")
		shown("shown by state terminated", true)
		setFilter("f-node", "local")
		shown("shown by its node", true)
		setFilter("f-key", "")
		setFilter("f-state", "")
		setFilter("f-node", "")
	})

	var logsID string
	t.Run("LogsFollow", func(t *testing.T) {
		br.watch(t)
		// It ignores SIGTERM and has a long grace period, so only a hard
		// terminate (TerminateFromPage) stops it at once.
		spawn := tb(map[string]string{"TB_LOG_LINES": "2", "APP_SECRET": "hunter2-secret", "TB_IGNORE_SIGTERM": "1"})
		grace := 60
		spawn.GraceSeconds = &grace
		resp := connect(t, b, "logs-1", spawn, true)
		logsID = resp.BackendID
		open(t, br, "#/backends/"+resp.BackendID)
		br.waitFor(t, "the output written at start", `document.querySelector("#bk-logs").textContent.includes("tb stdout 2")`)
		br.waitFor(t, "ready in the timeline", `document.querySelector('#bk-events li[data-state="ready"]') !== null`)

		// A line written now appears without a reload.
		const line = "written-while-watched-7f3a"
		get(t, resp.URL+"log?line="+line)
		br.waitFor(t, "the followed line", `document.querySelector("#bk-logs").textContent.includes("`+line+`")`)

		shown := eval[string](t, br, `document.querySelector("#bk-spawn").textContent`)
		if !strings.Contains(shown, "APP_SECRET") || !strings.Contains(shown, "TB_LOG_LINES") {
			t.Errorf("spawn config %q does not name its environment variables", shown)
		}
		if strings.Contains(eval[string](t, br, `document.body.innerText`), "hunter2-secret") {
			t.Errorf("the page shows an environment value")
		}
	})

	t.Run("TerminateFromPage", func(t *testing.T) {
		br.watch(t)
		if logsID == "" {
			t.Skip("LogsFollow failed before it spawned its backend")
		}
		// Cancelled, the confirmation leaves the backend running.
		br.do(t, "cancel a terminate",
			chromedp.Click(chromedp.ID("bk-term")),
			chromedp.WaitVisible(chromedp.ID("confirm")),
			chromedp.Click(chromedp.ID("confirm-cancel")),
			chromedp.WaitNotVisible(chromedp.ID("confirm")))
		time.Sleep(200 * time.Millisecond)
		if got, err := b.Client.Backend(testCtx(t), logsID); err != nil || got.State != berth.StateReady {
			t.Fatalf("after a cancelled terminate: %v %v, want ready", got, err)
		}
		br.do(t, "terminate hard, confirmed",
			chromedp.Click(chromedp.ID("bk-kill")),
			chromedp.WaitVisible(chromedp.ID("confirm")),
			chromedp.Click(chromedp.ID("confirm-ok")))
		br.waitFor(t, "terminated on the page", `document.querySelector("#bk-state")?.dataset.state === "terminated"`)
		br.waitFor(t, "terminated in the timeline", `document.querySelector('#bk-events li[data-state="terminated"]') !== null`)
		br.waitFor(t, "the log's end", `document.querySelector("#logs-status").textContent === "(ended)"`)
		got, err := b.Client.Backend(testCtx(t), logsID)
		if err != nil || got.State != berth.StateTerminated || got.Reason != berth.ReasonRequested {
			t.Errorf("backend after terminate from the page: %+v %v, want terminated, requested", got, err)
		}
		if !eval[bool](t, br, `document.querySelector("#bk-term").disabled && document.querySelector("#bk-kill").disabled`) {
			t.Errorf("Terminate is still enabled on a terminated backend")
		}
	})

	t.Run("TerminateByKeyboard", func(t *testing.T) {
		br.watch(t)
		resp := connect(t, b, "keyboard-1", tb(nil), true)
		open(t, br, "#/")
		br.waitFor(t, "the backend in the list", fmt.Sprintf(`document.querySelector('tr[data-id=%q]')?.dataset.state === "ready"`, resp.BackendID))
		tabTo(t, br, "the backend's link", fmt.Sprintf(`document.activeElement.matches("a.bk") && document.activeElement.closest("tr")?.dataset.id === %q`, resp.BackendID))
		if style := eval[string](t, br, `getComputedStyle(document.activeElement).outlineStyle`); style == "none" {
			t.Errorf("the focused link shows no outline")
		}
		br.do(t, "open it with Enter", chromedp.KeyEvent(kb.Enter))
		br.waitFor(t, "its page", fmt.Sprintf(`!document.querySelector("#view-backend").hidden && document.querySelector("#bk-id").textContent === %q && document.querySelector("#bk-state")?.dataset.state === "ready"`, resp.BackendID))
		tabTo(t, br, "Terminate", `document.activeElement.id === "bk-term"`)
		br.do(t, "press Terminate", chromedp.KeyEvent(kb.Enter))
		br.waitFor(t, "the confirmation, focus on Cancel", `document.querySelector("#confirm").open && document.activeElement.id === "confirm-cancel"`)
		br.do(t, "Tab to confirm", chromedp.KeyEvent(kb.Tab))
		br.waitFor(t, "focus on the confirm button", `document.activeElement.id === "confirm-ok"`)
		br.do(t, "confirm with Enter", chromedp.KeyEvent(kb.Enter))
		br.waitFor(t, "terminated on the page", `document.querySelector("#bk-state")?.dataset.state === "terminated"`)
		if got, err := b.Client.Backend(testCtx(t), resp.BackendID); err != nil || got.Reason != berth.ReasonRequested {
			t.Errorf("backend after the keyboard terminate: %+v %v, want reason requested", got, err)
		}
	})

	t.Run("RestoreState", func(t *testing.T) {
		br.watch(t)
		const key = "docs/restore-1" // a '/' in the key, as keys may have
		spawn := tb(nil)
		spawn.State = berth.StateConfig{Mode: berth.StateModeBlob}
		resp := connect(t, b, key, spawn, true)
		var env map[string]string
		if err := json.Unmarshal(get(t, resp.URL), &env); err != nil {
			t.Fatalf("backend env: %v", err)
		}
		for _, data := range []string{"first save", "second save"} {
			req, _ := http.NewRequestWithContext(testCtx(t), http.MethodPut, env["BERTH_STATE_URL"], strings.NewReader(data))
			req.Header.Set("Authorization", "Bearer "+env["BERTH_SECRET"])
			if r, body := send(t, req); r.StatusCode != http.StatusOK {
				t.Fatalf("save %q: %d %s", data, r.StatusCode, body)
			}
		}

		rows := `document.querySelectorAll("#st-versions tbody tr").length`
		open(t, br, "#/state/"+strings.ReplaceAll(key, "/", "%2F"))
		br.waitFor(t, "two versions", rows+` === 2`)
		br.waitFor(t, "the key shown live", `document.querySelector("#st-live").dataset.live === "true"`)
		restore := func() {
			t.Helper()
			br.do(t, "restore the older save",
				chromedp.Click(chromedp.CSS("#st-versions tbody tr:nth-child(2) button.restore")),
				chromedp.WaitVisible(chromedp.ID("confirm")),
				chromedp.Click(chromedp.ID("confirm-ok")),
				chromedp.WaitNotVisible(chromedp.ID("confirm")))
		}
		restore()
		br.waitFor(t, "the refusal's reason", `document.querySelector("#st-msg").textContent.includes("is live; terminate its backend before restoring")`)
		if vs, err := b.Client.StateVersions(testCtx(t), key); err != nil || len(vs) != 2 {
			t.Fatalf("versions after a refused restore: %d %v, want 2", len(vs), err)
		}

		if err := b.Client.Terminate(testCtx(t), resp.BackendID, false); err != nil {
			t.Fatal(err)
		}
		br.waitFor(t, "the key no longer live", `document.querySelector("#st-live").dataset.live === "false"`)
		// The terminated record is sent a moment before Berth lets go of
		// the key in memory, where a restore looks; a person cannot click
		// within it, a test can: wait until /healthz counts no backend.
		waitNoneLive(t, b)
		restore()
		br.waitFor(t, "the restore's result", `document.querySelector("#st-done").textContent.startsWith("Restored")`)
		br.waitFor(t, "three versions", rows+` === 3`)
		if msg := eval[string](t, br, `document.querySelector("#st-msg").textContent`); msg != "" {
			t.Errorf("an error shows after a restore that worked: %q", msg)
		}
		var cur bytes.Buffer
		if err := b.Client.StateData(testCtx(t), key, "", &cur); err != nil || cur.String() != "first save" {
			t.Errorf("current state after the restore: %q %v, want %q", cur.String(), err, "first save")
		}
		// The download link serves the version of its row.
		href := eval[string](t, br, `document.querySelector("#st-versions tbody tr:nth-child(3) a[download]").href`)
		if got := eval[string](t, br, `fetch(`+strconv.Quote(href)+`).then(r => r.text())`); got != "first save" {
			t.Errorf("download of the oldest save: %q, want %q", got, "first save")
		}
	})

	t.Run("EveryControlNamed", func(t *testing.T) {
		br.watch(t)
		// Every view has been drawn by now (list, backend, state history):
		// each form control has a label and each button or link a name a
		// screen reader can say.
		type named struct {
			Checked int      `json:"checked"`
			Unnamed []string `json:"unnamed"`
		}
		got := eval[named](t, br, `(() => {
			const all = [...document.querySelectorAll("input, select, textarea, button, a[href]")].filter((e) => e.type !== "hidden");
			const unnamed = all.filter((e) => (e.labels?.length ?? 0) === 0 && !e.getAttribute("aria-label") &&
				!e.getAttribute("aria-labelledby") && !e.textContent.trim() && !e.title);
			return {checked: all.length, unnamed: unnamed.map((e) => e.outerHTML.slice(0, 120))};
		})()`)
		if got.Checked < 15 {
			t.Errorf("only %d controls on the page; the views were not all drawn", got.Checked)
		}
		for _, e := range got.Unnamed {
			t.Errorf("a control without an accessible name: %s", e)
		}
	})

	t.Run("SignOut", func(t *testing.T) {
		br.watch(t)
		br.do(t, "sign out", chromedp.Click(chromedp.ID("logout")), chromedp.WaitVisible(chromedp.ID("login-form")))
		if got := eval[int](t, br, `fetch("/v1/backends").then(r => r.status)`); got != http.StatusUnauthorized {
			t.Errorf("GET /v1/backends after sign-out: %d, want 401", got)
		}
	})
}

// writeOps are the operations of api/openapi.json other than GET and
// HEAD, with each path parameter filled in.
func writeOps(t *testing.T) []struct{ method, path string } {
	t.Helper()
	var doc struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(api.OpenAPI, &doc); err != nil {
		t.Fatalf("api/openapi.json: %v", err)
	}
	var ops []struct{ method, path string }
	param := regexp.MustCompile(`\{[^}]*\}`)
	for path, item := range doc.Paths {
		for method := range item {
			switch m := strings.ToUpper(method); m {
			case http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete:
				ops = append(ops, struct{ method, path string }{m, param.ReplaceAllString(path, "none")})
			}
		}
	}
	if len(ops) < 5 {
		t.Fatalf("api/openapi.json has %d operations that change state; want the connect, terminate, restore, drain and pool ones at least", len(ops))
	}
	return ops
}

// waitNoneLive waits until the server runs no backend.
func waitNoneLive(t *testing.T, b *server) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var h struct{ Backends int }
		if err := json.Unmarshal(get(t, b.API+"/healthz"), &h); err != nil {
			t.Fatalf("/healthz: %v", err)
		}
		if h.Backends == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/healthz still counts %d live backends after 10s", h.Backends)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// open goes to a route of the dashboard within the page.
func open(t *testing.T, br *browser, hash string) {
	t.Helper()
	br.do(t, "go to "+hash, chromedp.Evaluate[chromedp.Void](`location.hash = `+strconv.Quote(hash)))
}

// tabTo presses Tab until the focus satisfies a JavaScript expression.
func tabTo(t *testing.T, br *browser, what, focused string) {
	t.Helper()
	for range 40 {
		if eval[bool](t, br, focused) {
			return
		}
		// Each press is judged only once focus has moved: a condition
		// read before the browser moved it would press again, past the
		// element sought.
		eval[bool](t, br, `(window.__tabFrom = document.activeElement, true)`)
		br.do(t, "press Tab", chromedp.KeyEvent(kb.Tab))
		ctx, cancel := context.WithTimeout(br.tab, 2*time.Second)
		chromedp.Run(ctx, chromedp.Poll[chromedp.Void](`document.activeElement !== window.__tabFrom`, chromedp.WithPollingInterval(5*time.Millisecond)))
		cancel() // focus that stays (it left the page) is judged as it is
	}
	t.Fatalf("40 presses of Tab never reached %s; focus is on %s", what, eval[string](t, br, `document.activeElement.outerHTML.slice(0, 200)`))
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// tb is a spawn of the test backend with env knobs.
func tb(env map[string]string) *berth.SpawnConfig {
	grace := 2
	return &berth.SpawnConfig{Command: []string{bin.testbackend}, Env: env, GraceSeconds: &grace}
}

// connect spawns a backend for key through the API, as an app server
// would, outside the page.
func connect(t *testing.T, b *server, key string, spawn *berth.SpawnConfig, wait bool) *api.ConnectResponse {
	t.Helper()
	resp, err := b.Client.Connect(testCtx(t), api.ConnectRequest{Key: key, Spawn: spawn, User: "ui-test", Wait: wait, WaitTimeoutSeconds: 20})
	if err != nil {
		t.Fatalf("connect %s: %v", key, err)
	}
	if wait && resp.State != berth.StateReady {
		t.Fatalf("connect %s: %s (%s), want ready", key, resp.State, resp.Reason)
	}
	return resp
}

func get(t *testing.T, url string) []byte {
	t.Helper()
	req, _ := http.NewRequestWithContext(testCtx(t), http.MethodGet, url, nil)
	resp, body := send(t, req)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, body)
	}
	return body
}

func send(t *testing.T, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	return resp, body
}
