package state

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/blob"
	"github.com/berthhq/berth/blob/file"
)

// oneLive plays the Manager for one live backend, which a test claims.
type oneLive struct {
	mu sync.Mutex
	b  berth.Backend
}

func (o *oneLive) LiveBackend(id string) (*berth.Backend, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if id != o.b.ID {
		return nil, false
	}
	b := o.b
	return &b, true
}
func (o *oneLive) KeyLive(key string) bool { return key != "" && key == o.b.Key }
func (o *oneLive) Backend(context.Context, string) (*berth.Backend, error) {
	return nil, berth.ErrNotFound
}

// An unclaimed pooled backend holds no key: the backend API refuses its
// reads and writes, even with the right secret, and serves them once a
// claim gave it a key.
func TestBackendAPI_Unclaimed(t *testing.T) {
	fs, err := file.New(t.TempDir(), blob.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer fs.Close()
	h := &oneLive{b: berth.Backend{ID: "bk_pooled", Pool: "web", Secret: "s3cret", Runtime: "process", FencingToken: 1,
		Spawn: berth.SpawnConfig{Command: []string{"x"}, State: berth.StateConfig{Mode: berth.StateModeBlob}}}}
	s, err := New(Config{Blobs: fs, Holders: h, Dir: t.TempDir(), BackendAPIURL: map[string]string{"process": "http://api"}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	srv := httptest.NewServer(s.BackendAPI())
	defer srv.Close()

	do := func(method, secret, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+"/v1/backends/bk_pooled/state", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+secret)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var sb strings.Builder
		buf := make([]byte, 512)
		n, _ := resp.Body.Read(buf)
		sb.Write(buf[:n])
		return resp.StatusCode, sb.String()
	}
	for _, method := range []string{http.MethodGet, http.MethodPut} {
		if code, body := do(method, "s3cret", "x"); code != http.StatusConflict || !strings.Contains(body, "claimed") {
			t.Errorf("unclaimed %s with its secret: %d %s; want 409 saying it is not claimed", method, code, body)
		}
		if code, _ := do(method, "wrong", "x"); code != http.StatusUnauthorized {
			t.Errorf("unclaimed %s with a wrong secret: %d; want 401", method, code)
		}
	}
	if _, _, err := fs.Get(t.Context(), "doc"); err == nil {
		t.Fatal("an unclaimed backend's write reached the blob store")
	}

	// The claim: a key, a fence (what the Manager's deliverClaim does).
	h.mu.Lock()
	h.b.Key, h.b.FencingToken = "doc", 1
	h.mu.Unlock()
	before(t, s, &h.b)
	if code, body := do(http.MethodPut, "s3cret", "hello"); code != http.StatusOK {
		t.Fatalf("claimed PUT: %d %s; want 200", code, body)
	}
	if code, body := do(http.MethodGet, "s3cret", ""); code != http.StatusOK || body != "hello" {
		t.Errorf("claimed GET: %d %q; want 200 hello", code, body)
	}
}
