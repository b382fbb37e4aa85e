package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
)

// ---- starting berth with state flags ----

// startWith is start with extra flags for berth.
func startWith(t *testing.T, o opts, extra ...string) *server {
	t.Helper()
	o.extra = append(o.extra, extra...)
	return start(t, o)
}

// ---- the real servers ----

func s3Env(t *testing.T) (endpoint, bucket string) {
	t.Helper()
	endpoint, bucket = os.Getenv("BERTH_TEST_S3_ENDPOINT"), os.Getenv("BERTH_TEST_S3_BUCKET")
	if endpoint == "" || bucket == "" || os.Getenv("AWS_ACCESS_KEY_ID") == "" {
		need(t, "an S3 server (BERTH_TEST_S3_ENDPOINT, BERTH_TEST_S3_BUCKET, AWS_* credentials)", "source .ci/services.sh")
	}
	return endpoint, bucket
}

func postgresEnv(t *testing.T) string {
	t.Helper()
	u := os.Getenv("BERTH_TEST_POSTGRES_URL")
	if u == "" {
		need(t, "PostgreSQL (BERTH_TEST_POSTGRES_URL)", "source .ci/services.sh")
	}
	return u
}

// s3BlobsURL is a --blobs value for bucket at endpoint under a prefix no
// other test uses.
func s3BlobsURL(endpoint, bucket string) string {
	q := url.Values{"endpoint": {endpoint}, "region": {"us-east-1"}, "path_style": {"true"}}
	return "s3://" + bucket + "/e2e-" + randHex(6) + "?" + q.Encode()
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func sha(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// ---- backends with state ----

// tbBlob runs testbackend with state mode blob.
func tbBlob() *berth.SpawnConfig {
	sc := tb(nil)
	sc.State = berth.StateConfig{Mode: berth.StateModeBlob}
	return sc
}

// shBackend runs script with /bin/sh (fine for the process runtime), with
// $TB_BIN naming testbackend, so a script can prepare files and then serve
// HTTP. Berth expands $NAME in arguments itself, so every '$' is doubled to
// reach the shell unchanged.
func shBackend(script string, env map[string]string, mode berth.StateMode) *berth.SpawnConfig {
	e := map[string]string{"TB_BIN": bin.testbackend}
	for k, v := range env {
		e[k] = v
	}
	return &berth.SpawnConfig{
		Command:      []string{"/bin/sh", "-c", strings.ReplaceAll(script, "$", "$$")},
		Env:          e,
		GraceSeconds: ptr(5),
		State:        berth.StateConfig{Mode: mode, SaveIntervalSeconds: 1},
	}
}

// ownState is what a blob-mode backend uses to reach its state.
type ownState struct{ url, secret string }

func stateOf(t *testing.T, backendURL string) ownState {
	t.Helper()
	env := tbEnv(t, backendURL)
	st := ownState{url: env["BERTH_STATE_URL"], secret: env["BERTH_SECRET"]}
	if st.url == "" || st.secret == "" {
		t.Fatalf("backend env lacks BERTH_STATE_URL or BERTH_SECRET: %v", env)
	}
	for k := range env {
		if strings.HasPrefix(k, "AWS_") || k == "BERTH_BLOBS" || k == "PGPASSWORD" {
			t.Errorf("backend sees the blob store's credentials or location: %s", k)
		}
	}
	return st
}

// stateReq sends a request to a backend's state URL as that backend (or
// with another secret) and returns status and body.
func stateReq(t *testing.T, method, u, secret string, body io.Reader, size int64) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(testCtx(t, 60*time.Second), method, u, body)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.ContentLength = size // -1: chunked
	}
	if secret != "" {
		req.Header.Set("Authorization", "Bearer "+secret)
	}
	resp, b := send(t, req)
	return resp.StatusCode, b
}

func (st ownState) put(t *testing.T, data string) (int, []byte) {
	t.Helper()
	return stateReq(t, http.MethodPut, st.url, st.secret, strings.NewReader(data), int64(len(data)))
}

// mustPut saves data and requires 200 with the saved version's info.
func (st ownState) mustPut(t *testing.T, data string) api.StateVersion {
	t.Helper()
	code, body := st.put(t, data)
	if code != http.StatusOK {
		t.Fatalf("PUT state %q: %d %s, want 200", data, code, body)
	}
	v := decode[api.StateVersion](t, body)
	if v.Version == "" || v.Size != int64(len(data)) || v.SHA256 != sha([]byte(data)) {
		t.Errorf("PUT state %q answered %+v; want its version, size %d and sha256", data, v, len(data))
	}
	return *v
}

// mustGet loads the state and requires 200 with want.
func (st ownState) mustGet(t *testing.T, want string) {
	t.Helper()
	code, body := stateReq(t, http.MethodGet, st.url, st.secret, nil, 0)
	if code != http.StatusOK || string(body) != want {
		t.Fatalf("GET own state: %d %q, want 200 %q", code, body, want)
	}
}

// savedData is the key's current state, read through the control API.
func (s *server) savedData(t *testing.T, key string) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := s.Client.StateData(testCtx(t, 30*time.Second), key, "", &buf); err != nil {
		t.Fatalf("GET /v1/state/data?key=%s: %v", key, err)
	}
	return buf.Bytes()
}

func (s *server) versions(t *testing.T, key string) []api.StateVersion {
	t.Helper()
	vs, err := s.Client.StateVersions(testCtx(t, 30*time.Second), key)
	if err != nil {
		t.Fatalf("GET /v1/state?key=%s: %v", key, err)
	}
	return vs
}

// saveWait bounds the wait for a periodic save of mode dir.
const saveWait = 45 * time.Second

// waitVersions polls the key's history until it has at least n saves.
func (s *server) waitVersions(t *testing.T, key string, n int, timeout time.Duration) []api.StateVersion {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		vs := s.versions(t, key)
		if len(vs) >= n {
			return vs
		}
		if time.Now().After(deadline) {
			t.Fatalf("key %s has %d saves after %v, want at least %d", key, len(vs), timeout, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// readTree returns every regular file under dir, by slash path.
func readTree(t *testing.T, dir string) map[string]string {
	t.Helper()
	files := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, e os.DirEntry, err error) error {
		if err != nil || !e.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		rel, _ := filepath.Rel(dir, p)
		files[filepath.ToSlash(rel)] = string(b)
		return err
	})
	if err != nil {
		t.Fatalf("read %s: %v", dir, err)
	}
	return files
}

func sameTree(t *testing.T, what string, got, want map[string]string) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: files %v, want %v", what, slices.Sorted(mapKeys(got)), slices.Sorted(mapKeys(want)))
	}
	for name, w := range want {
		if g, ok := got[name]; !ok {
			t.Errorf("%s: %s is missing", what, name)
		} else if g != w {
			t.Errorf("%s: %s = %q, want %q", what, name, g, w)
		}
	}
}

func mapKeys(m map[string]string) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// ---- 1. blob mode, the demo, every blob store ----

// TestStateBlobDemo is the newcomer's story on each blob store: type into
// the demo notepad, stop it softly (its SDK saves on SIGTERM), connect
// again: a new backend with a larger fencing token shows exactly that text.
func TestStateBlobDemo(t *testing.T) {
	t.Parallel()
	stores := []struct {
		name  string
		blobs func(t *testing.T) []string
	}{
		{"file", func(t *testing.T) []string { return nil }},
		{"s3", func(t *testing.T) []string { return []string{"--blobs", s3BlobsURL(s3Env(t))} }},
		{"postgres", func(t *testing.T) []string { return []string{"--blobs", postgresEnv(t)} }},
	}
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			s := startWith(t, opts{}, st.blobs(t)...)
			ctx := testCtx(t, 60*time.Second)
			key := "notes/" + st.name + "/" + randHex(4)
			spawn := demo()
			spawn.GraceSeconds = ptr(10) // the notepad needs up to 8s to close tabs and save
			spawn.State = berth.StateConfig{Mode: berth.StateModeBlob}

			a := s.spawnReady(t, key, spawn)
			if got := demoDoc(t, a.URL); got != "" {
				t.Fatalf("a fresh key's notepad shows %q, want an empty document", got)
			}
			conn := dialWS(t, ctx, a.URL)
			text := "saved on SIGTERM through the SDK (" + st.name + ") ✓\n\tsecond line <&>"
			wsRoundTrip(t, ctx, conn, "a draft")
			wsRoundTrip(t, ctx, conn, text)
			// Like a browser tab, keep answering (the close handshake
			// included) while the backend stops.
			conn.CloseRead(ctx)

			s.terminate(t, a.BackendID, false)
			end := s.waitTerminated(t, a.BackendID, 20*time.Second)
			if end.Reason != berth.ReasonRequested || end.ExitCode == nil || *end.ExitCode != 0 {
				t.Errorf("backend A ended %s (exit %s), want requested with exit 0 after its final save", end.Reason, fmtCode(end.ExitCode))
			}

			b := s.spawnReady(t, key, spawn)
			if !b.Spawned || b.BackendID == a.BackendID {
				t.Fatalf("connect after terminate: backend %s spawned=%v, want a new one (A was %s)", b.BackendID, b.Spawned, a.BackendID)
			}
			if b.FencingToken <= a.FencingToken {
				t.Errorf("fencing token of B = %d, want more than A's %d", b.FencingToken, a.FencingToken)
			}
			if got := demoDoc(t, b.URL); got != text {
				t.Fatalf("the next backend shows %q, want exactly the saved %q", got, text)
			}

			// The CLI sees the same save.
			r := s.cli(t, ctx, nil, "state", "ls", key, "--json")
			if r.code != 0 {
				t.Fatalf("berth state ls: exit %d: %s", r.code, r.stderr)
			}
			var l api.StateVersionList
			if err := json.Unmarshal([]byte(r.stdout), &l); err != nil || l.Key != key {
				t.Fatalf("berth state ls --json printed %q: %v", r.stdout, err)
			}
			vs := l.Versions
			if len(vs) == 0 || vs[0].SHA256 != sha([]byte(text)) || vs[0].Size != int64(len(text)) || vs[0].Fence != a.FencingToken {
				t.Fatalf("berth state ls: %+v; want the current save first: %d bytes, sha256 %s, fence %d", vs, len(text), sha([]byte(text)), a.FencingToken)
			}
			r = s.cli(t, ctx, nil, "state", "ls", key)
			if r.code != 0 || !strings.Contains(r.stdout, vs[0].Version) || !strings.Contains(r.stdout, "(current)") {
				t.Errorf("berth state ls (table): exit %d %q; want version %s marked current", r.code, r.stdout, vs[0].Version)
			}
			r = s.cli(t, ctx, nil, "state", "get", key)
			if r.code != 0 || r.stdout != text {
				t.Errorf("berth state get: exit %d, %q; want %q", r.code, r.stdout, text)
			}
			r = s.cli(t, ctx, nil, "state", "get", key, "--version", vs[0].Version)
			if r.code != 0 || r.stdout != text {
				t.Errorf("berth state get --version: exit %d, %q; want %q", r.code, r.stdout, text)
			}
		})
	}
}

// demoDoc is the notepad's document (GET api/doc through the proxy).
func demoDoc(t *testing.T, backendURL string) string {
	t.Helper()
	resp, body := get(t, backendURL+"api/doc", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET api/doc: %d %s", resp.StatusCode, body)
	}
	return decode[struct {
		Text string `json:"text"`
	}](t, body).Text
}

// ---- 2. mode dir ----

// TestStateDir: a program that only writes files gets them back. The
// directory is restored before the next backend starts, snapshotted while
// it runs, and saved once more after it exits — after a soft stop and after
// a crash alike.
func TestStateDir(t *testing.T) {
	t.Parallel()
	s := startWith(t, opts{})

	// Each backend first copies what it found into $SEEN (before serving:
	// so it was there before it started), then writes its own files.
	const script = `set -e
cp -a "$BERTH_STATE_DIR/." "$SEEN/"
printf 'written by %s' "$BERTH_BACKEND_ID" > "$BERTH_STATE_DIR/hello.txt"
mkdir -p "$BERTH_STATE_DIR/sub/deeper"
printf 'bin\000ary' > "$BERTH_STATE_DIR/sub/deeper/data.bin"
trap 'printf bye > "$BERTH_STATE_DIR/on-term.txt"; exit 0' TERM
set +e
"$TB_BIN"
`
	t.Run("terminate", func(t *testing.T) {
		t.Parallel()
		key := "dir/" + randHex(4)
		seenA, seenB := t.TempDir(), t.TempDir()
		a := s.spawnReady(t, key, shBackend(script, map[string]string{"SEEN": seenA}, berth.StateModeDir))
		sameTree(t, "backend A found (fresh key)", readTree(t, seenA), nil)
		dirA := tbEnv(t, a.URL)["BERTH_STATE_DIR"]
		if dirA == "" || !filepath.IsAbs(dirA) {
			t.Fatalf("BERTH_STATE_DIR = %q, want an absolute path", dirA)
		}

		// save_interval_seconds 1: a snapshot of the files it wrote comes
		// while it runs, and another once something changes. Each save
		// fsyncs its spool file and directory, which on a machine busy
		// writing (a CI run beside builds) has taken over 10 s.
		vs := s.waitVersions(t, key, 1, saveWait)
		if got := s.savedData(t, key); len(got) < 2 || got[0] != 0x1f || got[1] != 0x8b {
			t.Errorf("the saved snapshot starts %x; want a gzip stream", got[:min(len(got), 4)])
		}
		if err := os.WriteFile(filepath.Join(dirA, "late.txt"), []byte("changed while running"), 0o644); err != nil {
			t.Fatal(err)
		}
		s.waitVersions(t, key, len(vs)+1, saveWait)

		s.terminate(t, a.BackendID, false)
		end := s.waitTerminated(t, a.BackendID, 20*time.Second)
		if end.Reason != berth.ReasonRequested {
			t.Errorf("A ended %s, want requested", end.Reason)
		}
		if _, err := os.Stat(dirA); !os.IsNotExist(err) {
			t.Errorf("A's state dir %s is still there after it terminated (err %v)", dirA, err)
		}

		b := s.spawnReady(t, key, shBackend(script, map[string]string{"SEEN": seenB}, berth.StateModeDir))
		sameTree(t, "backend B found", readTree(t, seenB), map[string]string{
			"hello.txt":           "written by " + a.BackendID,
			"sub/deeper/data.bin": "bin\x00ary",
			"late.txt":            "changed while running",
			"on-term.txt":         "bye", // written after SIGTERM: only the save after exit has it
		})
		if dirB := tbEnv(t, b.URL)["BERTH_STATE_DIR"]; dirB == dirA {
			t.Errorf("B got A's directory %s; want a fresh one restored from the blob store", dirB)
		}
	})

	t.Run("crash", func(t *testing.T) {
		t.Parallel()
		key := "dir-crash/" + randHex(4)
		seenA, seenB := t.TempDir(), t.TempDir()
		const crashing = `set -e
cp -a "$BERTH_STATE_DIR/." "$SEEN/"
printf 'before the crash' > "$BERTH_STATE_DIR/pre.txt"
set +e
"$TB_BIN"
code=$?
printf 'testbackend exited %s' "$code" > "$BERTH_STATE_DIR/post-crash.txt"
exit 7
`
		a := s.spawnReady(t, key, shBackend(crashing, map[string]string{"SEEN": seenA}, berth.StateModeDir))
		req, _ := http.NewRequestWithContext(testCtx(t, 10*time.Second), http.MethodGet, a.URL+"crash", nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close() // the backend may die before it has answered
		}
		end := s.waitTerminated(t, a.BackendID, 20*time.Second)
		if end.Reason != berth.ReasonCrashed || end.ExitCode == nil || *end.ExitCode != 7 {
			t.Errorf("A ended %s (exit %s), want crashed with exit 7", end.Reason, fmtCode(end.ExitCode))
		}
		s.spawnReady(t, key, shBackend(script, map[string]string{"SEEN": seenB}, berth.StateModeDir))
		sameTree(t, "the backend after the crash found", readTree(t, seenB), map[string]string{
			"pre.txt":        "before the crash",
			"post-crash.txt": "testbackend exited 2", // written after the crash
		})
	})
}

// ---- 3. mode volume ----

// TestStateVolume: successive backends of a key share one directory under
// --volume-root, and no key — however many dots and slashes — gets a
// directory outside it.
func TestStateVolume(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	s := startWith(t, opts{}, "--volume-root", root)
	const script = `set -e
cp -a "$BERTH_STATE_DIR/." "$SEEN/"
echo "$BERTH_BACKEND_ID" >> "$BERTH_STATE_DIR/holders.txt"
exec "$TB_BIN"
`
	inRoot := func(t *testing.T, key, dir string) {
		t.Helper()
		real, err := filepath.EvalSymlinks(dir)
		if err != nil {
			t.Fatalf("key %q: BERTH_STATE_DIR %q: %v", key, dir, err)
		}
		if filepath.Dir(real) != root || !under(real, root) {
			t.Errorf("key %q got BERTH_STATE_DIR %q (really %q); want a directory directly under --volume-root %s", key, dir, real, root)
		}
	}

	t.Run("shared", func(t *testing.T) {
		t.Parallel()
		key := "vol/" + randHex(4)
		seenA, seenB := t.TempDir(), t.TempDir()
		a := s.spawnReady(t, key, shBackend(script, map[string]string{"SEEN": seenA}, berth.StateModeVolume))
		dirA := tbEnv(t, a.URL)["BERTH_STATE_DIR"]
		inRoot(t, key, dirA)
		sameTree(t, "A found (fresh key)", readTree(t, seenA), nil)
		s.terminate(t, a.BackendID, false)
		s.waitTerminated(t, a.BackendID, 20*time.Second)

		b := s.spawnReady(t, key, shBackend(script, map[string]string{"SEEN": seenB}, berth.StateModeVolume))
		if dirB := tbEnv(t, b.URL)["BERTH_STATE_DIR"]; dirB != dirA {
			t.Errorf("B's BERTH_STATE_DIR = %q, want A's %q", dirB, dirA)
		}
		sameTree(t, "B found", readTree(t, seenB), map[string]string{"holders.txt": a.BackendID + "\n"})
		if got, _ := os.ReadFile(filepath.Join(dirA, "holders.txt")); string(got) != a.BackendID+"\n"+b.BackendID+"\n" {
			t.Errorf("holders.txt = %q, want A then B", got)
		}
	})

	t.Run("escape", func(t *testing.T) {
		t.Parallel()
		keys := []string{"../x", "a/../../b", "..", ".", "../../../../../../tmp", "/etc", "a/b", "a", "./a"}
		dirs := map[string]string{}
		for _, key := range keys {
			r := s.spawnReady(t, key, &berth.SpawnConfig{
				Command:      []string{bin.testbackend},
				GraceSeconds: ptr(2),
				State:        berth.StateConfig{Mode: berth.StateModeVolume},
			})
			dir := tbEnv(t, r.URL)["BERTH_STATE_DIR"]
			inRoot(t, key, dir)
			if other, dup := dirs[dir]; dup {
				t.Errorf("keys %q and %q share the directory %s", other, key, dir)
			}
			dirs[dir] = key
		}
	})

	t.Run("symlink", func(t *testing.T) {
		t.Parallel()
		key := "trap/" + randHex(4)
		spawn := &berth.SpawnConfig{
			Command:      []string{bin.testbackend},
			GraceSeconds: ptr(2),
			State:        berth.StateConfig{Mode: berth.StateModeVolume},
		}
		a := s.spawnReady(t, key, spawn)
		dir := tbEnv(t, a.URL)["BERTH_STATE_DIR"]
		s.terminate(t, a.BackendID, false)
		s.waitTerminated(t, a.BackendID, 20*time.Second)
		// Someone with access to the root swaps the key's directory for a
		// symlink to elsewhere: Berth must not follow it.
		outside := t.TempDir()
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(outside, dir); err != nil {
			t.Fatal(err)
		}
		resp, body := s.do(t, http.MethodPost, "/v1/connect", connectJSON(t, api.ConnectRequest{Key: key, Spawn: spawn, Wait: true, WaitTimeoutSeconds: 20}))
		switch r := decode[api.ConnectResponse](t, body); {
		case resp.StatusCode == http.StatusCreated && r.State == berth.StateReady:
			got := tbEnv(t, r.URL)["BERTH_STATE_DIR"]
			if real, err := filepath.EvalSymlinks(got); err != nil || !under(real, root) {
				t.Errorf("through a symlinked volume the backend got %q (really %q, %v), outside the root", got, real, err)
			}
		case resp.StatusCode != http.StatusBadGateway || apiError(t, body).Reason != berth.ReasonSpawnFailed:
			t.Errorf("spawn over a symlinked volume: %d %s; want it refused (502, spawn_failed) or given a directory inside the root", resp.StatusCode, body)
		}
		if ents, _ := os.ReadDir(outside); len(ents) != 0 {
			t.Errorf("something was written outside the volume root, into %s", outside)
		}
	})
}

// ---- 4. fencing ----

// TestStateFencing: a backend writes only while it holds its key and only
// with its own secret; a refused write changes nothing.
func TestStateFencing(t *testing.T) {
	t.Parallel()
	s := startWith(t, opts{})
	key := "fence/" + randHex(4)

	a := s.spawnReady(t, key, tbBlob())
	sa := stateOf(t, a.URL)
	if !strings.HasSuffix(sa.url, "/v1/backends/"+a.BackendID+"/state") {
		t.Errorf("BERTH_STATE_URL = %q, want …/v1/backends/%s/state", sa.url, a.BackendID)
	}
	if code, body := stateReq(t, http.MethodGet, sa.url, sa.secret, nil, 0); code != http.StatusNotFound {
		t.Errorf("GET state of a fresh key: %d %s, want 404", code, body)
	}
	va := sa.mustPut(t, "written by A")
	if va.Fence != a.FencingToken {
		t.Errorf("A's save carries fence %d, want A's token %d", va.Fence, a.FencingToken)
	}
	sa.mustGet(t, "written by A")

	// Wrong or missing secrets: 401, nothing written.
	for name, secret := range map[string]string{"wrong": "not-the-secret", "empty": "", "other case": strings.ToUpper(sa.secret)} {
		code, body := stateReq(t, http.MethodPut, sa.url, secret, strings.NewReader("forged"), 6)
		if code != http.StatusUnauthorized {
			t.Errorf("PUT with a %s secret: %d %s, want 401", name, code, body)
		}
		if code, _ := stateReq(t, http.MethodGet, sa.url, secret, nil, 0); code != http.StatusUnauthorized {
			t.Errorf("GET with a %s secret: %d, want 401", name, code)
		}
	}

	// A keeps writing, as a stale or leaked writer would, while it is
	// stopped: once it is terminated every write must be refused — its
	// final state is durable and must not change any more.
	h := hammerState(t, sa)
	s.terminate(t, a.BackendID, false)
	endA := s.waitTerminated(t, a.BackendID, 20*time.Second)
	seen := time.Now()
	before, late := h.until(seen, 50, 3*time.Second)
	// Berth's own clock says the same: nothing of A's was saved after A
	// was terminated.
	if vs := s.versions(t, key); len(vs) > 0 && endA.TerminatedAt != nil && vs[0].SavedAt.After(*endA.TerminatedAt) {
		t.Errorf("A's save %s (fence %d) was committed at %s, %v after A was terminated at %s; a terminated backend's state must not change",
			vs[0].Version, vs[0].Fence, vs[0].SavedAt.Format(time.RFC3339Nano), vs[0].SavedAt.Sub(*endA.TerminatedAt), endA.TerminatedAt.Format(time.RFC3339Nano))
	}
	// 202 (spooled) counts as saved, as the SDK takes it.
	accepted := map[string]bool{"written by A": true}
	for _, w := range before {
		if w.code == http.StatusOK || w.code == http.StatusAccepted {
			accepted[w.data] = true
		}
	}
	codes := map[int]int{}
	for _, w := range before {
		codes[w.code]++
	}
	t.Logf("A wrote %d times until it was seen terminated (answers: %v), %d times after", len(before), codes, len(late))
	for _, w := range before {
		if w.code != http.StatusOK && w.code != http.StatusAccepted && w.code != http.StatusConflict {
			t.Errorf("PUT by A while it held the key or stopped: %d %s; want 200 (or 202), or 409 once it lost the key", w.code, w.body)
			break
		}
	}
	bad := 0
	for _, w := range late {
		if w.code != http.StatusConflict {
			if bad++; bad <= 3 {
				t.Errorf("PUT by A %v after it was seen terminated: %d %s, want 409", w.started.Sub(seen).Round(time.Microsecond), w.code, w.body)
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d writes by A after it was terminated were not refused", bad, len(late))
	}
	final := string(s.savedData(t, key))
	if !accepted[final] {
		t.Errorf("state after A terminated = %q, which is none of A's writes accepted before", final)
	}

	// A no longer holds the key: 409, even with no successor yet.
	if code, body := sa.put(t, "A after it terminated"); code != http.StatusConflict {
		t.Errorf("PUT by A after it terminated: %d %s, want 409", code, body)
	}
	if got := string(s.savedData(t, key)); got != final {
		t.Errorf("state after A's refused write = %q, want %q", got, final)
	}

	b := s.spawnReady(t, key, tbBlob())
	if b.FencingToken <= a.FencingToken {
		t.Errorf("B's fencing token %d is not above A's %d", b.FencingToken, a.FencingToken)
	}
	sb := stateOf(t, b.URL)
	sb.mustGet(t, final)
	vb := sb.mustPut(t, "written by B")
	if vb.Fence != b.FencingToken {
		t.Errorf("B's save carries fence %d, want %d", vb.Fence, b.FencingToken)
	}

	// A's URL and secret while B holds the key; A's secret on B's URL.
	if code, body := sa.put(t, "A, stale"); code != http.StatusConflict {
		t.Errorf("PUT by A while B holds the key: %d %s, want 409", code, body)
	}
	if code, _ := stateReq(t, http.MethodGet, sa.url, sa.secret, nil, 0); code != http.StatusConflict {
		t.Errorf("GET by A while B holds the key: %d, want 409", code)
	}
	if code, body := stateReq(t, http.MethodPut, sb.url, sa.secret, strings.NewReader("A on B's URL"), 12); code != http.StatusUnauthorized {
		t.Errorf("PUT to B's URL with A's secret: %d %s, want 401", code, body)
	}
	if code, body := stateReq(t, http.MethodPut, sa.url, sb.secret, strings.NewReader("B on A's URL"), 12); code != http.StatusConflict && code != http.StatusUnauthorized {
		t.Errorf("PUT to A's URL with B's secret: %d %s, want 409 or 401", code, body)
	}

	sb.mustGet(t, "written by B")
	vs := s.versions(t, key)
	if len(vs) < 2 || vs[0].Fence != b.FencingToken || vs[0].SHA256 != sha([]byte("written by B")) {
		t.Fatalf("history %+v; want B's save first", vs)
	}
	for _, v := range vs[1:] {
		if v.Fence != a.FencingToken {
			t.Errorf("history %+v: a save with fence %d; want only B's and A's (%d, %d)", vs, v.Fence, b.FencingToken, a.FencingToken)
		}
	}
}

// TestStateSecretOracle: the backend API answers a wrong secret the same
// way whether the backend id is live, terminated or unknown, so it tells
// nobody which ids are live; the right secret of a terminated backend is
// still told it no longer holds its key.
func TestStateSecretOracle(t *testing.T) {
	t.Parallel()
	s := startWith(t, opts{})
	a := s.spawnReady(t, "oracle/"+randHex(4), tbBlob())
	sa := stateOf(t, a.URL)
	unknown := strings.Replace(sa.url, a.BackendID, "bk_doesnotexist0000", 1)

	type answer struct {
		code int
		err  api.ErrorDetail
	}
	ask := func(method, u, secret string) answer {
		t.Helper()
		var body io.Reader
		if method == http.MethodPut {
			body = strings.NewReader("forged")
		}
		code, b := stateReq(t, method, u, secret, body, 6)
		return answer{code, apiError(t, b)}
	}
	wrong := map[string]string{"wrong": "not-the-secret", "empty": "", "A's, on another id": sa.secret}
	var want *answer
	check := func(what, u string) {
		t.Helper()
		for name, secret := range wrong {
			if u == sa.url && secret == sa.secret {
				continue // A's own: right, not wrong
			}
			for _, method := range []string{http.MethodPut, http.MethodGet} {
				got := ask(method, u, secret)
				if got.code != http.StatusUnauthorized {
					t.Errorf("%s %s backend, %s secret: %d %+v, want 401", method, what, name, got.code, got.err)
					continue
				}
				if want == nil {
					want = &got
				} else if got != *want {
					t.Errorf("%s %s backend, %s secret: %+v; want the same answer as every wrong secret, %+v", method, what, name, got, *want)
				}
			}
		}
	}
	check("live", sa.url)
	check("unknown", unknown)
	s.terminate(t, a.BackendID, false)
	s.waitTerminated(t, a.BackendID, 20*time.Second)
	check("terminated", sa.url)

	// The right secret: A no longer holds its key.
	for _, method := range []string{http.MethodPut, http.MethodGet} {
		if got := ask(method, sa.url, sa.secret); got.code != http.StatusConflict {
			t.Errorf("%s by A after it terminated, with its secret: %d %+v, want 409", method, got.code, got.err)
		}
	}
}

// stateWrite is one PUT of a hammer.
type stateWrite struct {
	started time.Time
	data    string
	code    int
	body    string
}

// stateHammer PUTs a backend's state over and over.
type stateHammer struct {
	mu     sync.Mutex
	writes []stateWrite
	stop   context.CancelFunc
	done   chan struct{}
}

// hammerState starts several writers, so that writes are in flight at
// every moment, a stop and its final save included. Stopping lets each
// finish the write it is sending: every write sent is recorded.
func hammerState(t *testing.T, st ownState) *stateHammer {
	stopping, stop := context.WithCancel(t.Context())
	h := &stateHammer{stop: stop, done: make(chan struct{})}
	var wg sync.WaitGroup
	for n := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; stopping.Err() == nil; i++ {
				w := stateWrite{started: time.Now(), data: fmt.Sprintf("A's write %d/%d", n, i)}
				req, _ := http.NewRequestWithContext(t.Context(), http.MethodPut, st.url, strings.NewReader(w.data))
				req.Header.Set("Authorization", "Bearer "+st.secret)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					w.code, w.body = -1, err.Error()
				} else {
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					w.code, w.body = resp.StatusCode, string(b)
				}
				h.mu.Lock()
				h.writes = append(h.writes, w)
				h.mu.Unlock()
			}
		}()
	}
	go func() { wg.Wait(); close(h.done) }()
	t.Cleanup(func() { stop(); <-h.done })
	return h
}

// until waits for n writes that started after t0 (or for timeout), stops
// the hammer and returns every write, split into those that started before
// t0 and after.
func (h *stateHammer) until(t0 time.Time, n int, timeout time.Duration) (before, after []stateWrite) {
	deadline := time.Now().Add(timeout)
	for {
		h.mu.Lock()
		k := 0
		for _, w := range h.writes {
			if !w.started.Before(t0) {
				k++
			}
		}
		h.mu.Unlock()
		if k >= n || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	h.stop()
	<-h.done
	for _, w := range h.writes {
		if w.started.Before(t0) {
			before = append(before, w)
		} else {
			after = append(after, w)
		}
	}
	return before, after
}

// TestStateConcurrentSaves: saves of one backend that overlap all land
// (200: the blob store is up, so nothing is spooled — 202 means the store
// is unreachable), the last one committed is the current state, and no
// save error is counted.
func TestStateConcurrentSaves(t *testing.T) {
	t.Parallel()
	s := startWith(t, opts{})
	key := "concurrent/" + randHex(4)
	a := s.spawnReady(t, key, tbBlob())
	st := stateOf(t, a.URL)
	h := hammerState(t, st)
	_, writes := h.until(time.Now(), 80, 10*time.Second)
	codes := map[int]int{}
	written := map[string]bool{}
	for _, w := range writes {
		codes[w.code]++
		written[w.data] = true
	}
	t.Logf("answers to %d overlapping saves: %v", len(writes), codes)
	if codes[http.StatusOK] != len(writes) {
		for _, w := range writes {
			if w.code != http.StatusOK {
				t.Errorf("overlapping save %q: %d %s; want 200 (the blob store is up)", w.data, w.code, w.body)
				break
			}
		}
	}
	final := s.savedData(t, key)
	if vs := s.versions(t, key); len(vs) == 0 || vs[0].SHA256 != sha(final) {
		t.Errorf("current state %q does not match the head of the history %+v", final, vs)
	}
	if !written[string(final)] && len(writes) > 0 {
		t.Errorf("current state %q is none of the saves", final)
	}
	if n := metric(t, s, "berth_state_save_errors_total"); n != 0 {
		t.Errorf("berth_state_save_errors_total = %v after saves that all went through; want 0", n)
	}
}

// ---- 6. large states ----

// TestStateLarge: a 64 MiB state goes in and comes back bit for bit, Berth
// streams it (its memory does not grow by anything like the body), and one
// byte over --max-state-bytes is refused with 413 and changes nothing.
func TestStateLarge(t *testing.T) {
	t.Parallel()
	const limit = 64 << 20
	s := startWith(t, opts{}, "--max-state-bytes", strconv.Itoa(limit))
	key := "big/" + randHex(4)
	a := s.spawnReady(t, key, tbBlob())
	st := stateOf(t, a.URL)
	pid := s.cmd.Process.Pid

	rssBefore := procStatusKB(t, pid, "VmRSS")
	// Reset the peak so VmHWM measures this PUT and GET only.
	hwmReset := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0) == nil

	gen := func(n int64) io.Reader { return io.LimitReader(mrand.NewChaCha8([32]byte{'b', 'e', 'r', 't', 'h'}), n) }
	h := sha256.New()
	code, body := stateReq(t, http.MethodPut, st.url, st.secret, io.TeeReader(gen(limit), h), limit)
	if code != http.StatusOK {
		t.Fatalf("PUT 64 MiB: %d %s, want 200", code, body)
	}
	want := hex.EncodeToString(h.Sum(nil))
	if v := decode[api.StateVersion](t, body); v.Size != limit || v.SHA256 != want {
		t.Errorf("PUT 64 MiB answered size %d sha256 %s; want %d %s", v.Size, v.SHA256, limit, want)
	}

	req, _ := http.NewRequestWithContext(testCtx(t, 60*time.Second), http.MethodGet, st.url, nil)
	req.Header.Set("Authorization", "Bearer "+st.secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	h.Reset()
	n, err := io.Copy(h, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || err != nil || n != limit || hex.EncodeToString(h.Sum(nil)) != want {
		t.Fatalf("GET 64 MiB: %d, %d bytes, err %v, sha256 %x; want 200, %d bytes, %s", resp.StatusCode, n, err, h.Sum(nil), limit, want)
	}

	peak := procStatusKB(t, pid, "VmHWM")
	if !hwmReset {
		t.Logf("could not reset VmHWM (clear_refs); measuring against the lifetime peak")
	}
	growth := peak - rssBefore
	t.Logf("berth RSS %d KiB before, peak %d KiB during the 64 MiB PUT and GET (growth %d KiB)", rssBefore, peak, growth)
	if growth > 48<<10 {
		t.Errorf("berth's peak RSS grew by %d MiB while a 64 MiB state went through it; it must stream, not buffer", growth>>10)
	}

	// One byte over the limit: refused, with a known length and chunked.
	for _, size := range []int64{limit + 1, -1} {
		body := gen(limit + 1)
		code, msg := stateReq(t, http.MethodPut, st.url, st.secret, body, size)
		if code != http.StatusRequestEntityTooLarge {
			t.Errorf("PUT of limit+1 bytes (Content-Length %d): %d %s, want 413", size, code, msg)
		} else {
			apiError(t, msg)
		}
	}
	if vs := s.versions(t, key); len(vs) != 1 || vs[0].SHA256 != want {
		t.Errorf("after the refused PUTs the history is %+v; want only the 64 MiB save", vs)
	}
}

// TestStateTooLarge: a state over --max-state-bytes is 413 too_large, and
// one far over it, sent slowly, is answered before the backend has sent
// it all: Berth reads no more than the limit and a byte.
func TestStateTooLarge(t *testing.T) {
	t.Parallel()
	const limit = 4 << 10
	s := startWith(t, opts{}, "--max-state-bytes", strconv.Itoa(limit))
	key := "toolarge/" + randHex(4)
	st := stateOf(t, s.spawnReady(t, key, tbBlob()).URL)
	st.mustPut(t, strings.Repeat("s", limit))

	for _, size := range []int64{limit + 1, -1} {
		code, body := stateReq(t, http.MethodPut, st.url, st.secret, strings.NewReader(strings.Repeat("s", limit+1)), size)
		if code != http.StatusRequestEntityTooLarge {
			t.Fatalf("PUT of limit+1 bytes (Content-Length %d): %d %s, want 413", size, code, body)
		}
		if e := apiError(t, body); e.Code != "too_large" {
			t.Errorf("PUT of limit+1 bytes (Content-Length %d): code %q, want too_large", size, e.Code)
		}
	}
	// Under 256 KiB, net/http would read the rest of a body the handler
	// left, to keep the connection, before it sent the answer.
	for _, chunked := range []bool{false, true} {
		res, body, finished := slowUpload(t, st.url, st.secret, chunked, 2*limit, 200<<10)
		if res.StatusCode != http.StatusRequestEntityTooLarge {
			t.Fatalf("slow PUT (chunked %v): %d %s, want 413", chunked, res.StatusCode, body)
		}
		if e := apiError(t, body); e.Code != "too_large" {
			t.Errorf("slow PUT (chunked %v): code %q, want too_large", chunked, e.Code)
		}
		if finished {
			t.Errorf("slow PUT (chunked %v): answered only after the backend sent all of it", chunked)
		}
	}
	if vs := s.versions(t, key); len(vs) != 1 {
		t.Errorf("after the refused PUTs the history is %+v; want only the first save", vs)
	}
}

// procStatusKB reads one "Name: N kB" line of /proc/<pid>/status.
func procStatusKB(t *testing.T, pid int, name string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+":"); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatalf("/proc/%d/status %s: %q", pid, name, line)
			}
			return n
		}
	}
	t.Fatalf("/proc/%d/status has no %s", pid, name)
	return 0
}

// ---- 7. restore ----

// TestStateRestore: an operator can make an earlier save current again —
// never while a backend holds the key — and the next backend loads it.
func TestStateRestore(t *testing.T) {
	t.Parallel()
	s := startWith(t, opts{})
	ctx := testCtx(t, 60*time.Second)
	key := "restore/" + randHex(4)
	a := s.spawnReady(t, key, tbBlob())
	st := stateOf(t, a.URL)
	v1 := st.mustPut(t, "first")
	st.mustPut(t, "second")

	r := s.cli(t, ctx, nil, "state", "restore", key, "--version", v1.Version)
	if r.code == 0 || !strings.Contains(r.stderr, "live") {
		t.Errorf("berth state restore while live: exit %d, stderr %q; want a failure saying the key is live", r.code, r.stderr)
	}
	resp, body := s.do(t, http.MethodPost, "/v1/state/restore", fmt.Sprintf(`{"key":%q,"version":%q}`, key, v1.Version))
	if resp.StatusCode != http.StatusConflict {
		t.Errorf("POST /v1/state/restore while live: %d %s, want 409", resp.StatusCode, body)
	} else if e := apiError(t, body); e.Code != api.CodeConflict {
		t.Errorf("restore while live: error code %q, want %q", e.Code, api.CodeConflict)
	}
	if got := string(s.savedData(t, key)); got != "second" {
		t.Fatalf("after the refused restore the state is %q, want %q", got, "second")
	}
	st.mustGet(t, "second")

	s.terminate(t, a.BackendID, false)
	s.waitTerminated(t, a.BackendID, 20*time.Second)

	r = s.cli(t, ctx, nil, "state", "restore", key, "--version", v1.Version)
	if r.code != 0 {
		t.Fatalf("berth state restore after terminate: exit %d %s", r.code, r.stderr)
	}
	if r = s.cli(t, ctx, nil, "state", "get", key); r.stdout != "first" {
		t.Errorf("berth state get after restore: %q, want %q", r.stdout, "first")
	}
	vs := s.versions(t, key)
	if len(vs) != 3 || vs[0].SHA256 != sha([]byte("first")) || vs[0].Version == v1.Version {
		t.Errorf("history after restore: %+v; want three saves, the restored one first under a new version", vs)
	}
	if resp, body := s.do(t, http.MethodPost, "/v1/state/restore", fmt.Sprintf(`{"key":%q,"version":"no-such-version"}`, key)); resp.StatusCode != http.StatusNotFound {
		t.Errorf("restore of an unknown version: %d %s, want 404", resp.StatusCode, body)
	}

	b := s.spawnReady(t, key, tbBlob())
	stateOf(t, b.URL).mustGet(t, "first")
}
