package sdk

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// A pooled backend learns its identity from its claim, loads its state
// with the secret the claim brought, and serves one key in its life.
func TestClaimHandler(t *testing.T) {
	t.Setenv("BERTH_POOL", "web")
	t.Setenv("BERTH_CLAIM_TOKEN", "tok")
	t.Setenv("BERTH_STATE_URL", "")
	state := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer sec" {
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		w.Write([]byte("saved by the last holder"))
	}))
	defer state.Close()
	if _, err := FromEnv(); err != ErrNotConfigured {
		t.Errorf("FromEnv before the claim: %v; want ErrNotConfigured", err)
	}
	var loaded string
	h := ClaimHandler(LoadOnClaim(func(b []byte) { loaded = string(b) }))
	post := func(token string, id Identity) int {
		body, _ := json.Marshal(id)
		req := httptest.NewRequest(http.MethodPost, ClaimPath, strings.NewReader(string(body)))
		req.Header.Set("Authorization", "Bearer "+token)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Code
	}
	id := Identity{BackendID: "bk_1", Pool: "web", Key: "doc", FencingToken: 4, Secret: "sec", StateURL: state.URL}
	if code := post("wrong", id); code != http.StatusUnauthorized {
		t.Errorf("claim with a wrong token: %d; want 401", code)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	if _, err := Claimed(ctx); err == nil {
		t.Error("Claimed before the claim returned an identity")
	}
	cancel()
	if code := post("tok", id); code != http.StatusNoContent {
		t.Fatalf("claim: %d; want 204", code)
	}
	if loaded != "saved by the last holder" {
		t.Errorf("loaded %q on claim; want the saved state", loaded)
	}
	got, err := Claimed(context.Background())
	if err != nil || got.Key != "doc" || got.FencingToken != 4 || got.Secret != "sec" {
		t.Errorf("Claimed = %+v, %v; want key doc, fence 4", got, err)
	}
	if c, err := FromEnv(); err != nil || c.URL != state.URL || c.Secret != "sec" {
		t.Errorf("FromEnv after the claim = %+v, %v; want the claim's state URL and secret", c, err)
	}
	loaded = ""
	if code := post("tok", id); code != http.StatusNoContent || loaded != "" {
		t.Errorf("repeated claim: %d (loaded again: %v); want 204 without a second load", code, loaded != "")
	}
	other := id
	other.Key, other.FencingToken = "doc2", 5
	if code := post("tok", other); code != http.StatusConflict {
		t.Errorf("claim for a second key: %d; want 409", code)
	}
}
