package e2e

import (
	"bytes"
	"encoding/base64"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth/api"
	"github.com/berthhq/berth/token"
)

// TestTokens: the proxy lets through only genuine, unexpired tokens for a
// live backend; everything else is 401, and a terminated backend is 410.
func TestTokens(t *testing.T) {
	t.Parallel()
	// A key the test knows, so it can mint tokens the way a server would:
	// expired ones, and ones signed with another key.
	key := []byte(strings.Repeat("e2e-token-key-", 4))
	s := start(t, opts{tokenKey: string(key)})
	signer, err := token.NewSigner(key)
	if err != nil {
		t.Fatal(err)
	}
	other, err := token.NewSigner([]byte(strings.Repeat("another-key!", 4)))
	if err != nil {
		t.Fatal(err)
	}

	a := s.spawnReady(t, "tok-a", tb(nil))
	b := s.spawnReady(t, "tok-b", tb(nil))
	proxyURL := func(tok string) string { return s.Proxy + "/" + tok + "/" }

	status := func(t *testing.T, url string) int {
		t.Helper()
		resp, _ := get(t, url, nil)
		return resp.StatusCode
	}

	t.Run("genuine", func(t *testing.T) {
		if got := status(t, a.URL); got != http.StatusOK {
			t.Errorf("connect's own URL: %d, want 200", got)
		}
		// A token minted with the server's key is as good as its own, which
		// shows the minted expired token below differs only in its expiry.
		if got := status(t, proxyURL(signer.Issue(a.BackendID, "e2e", time.Now().Add(time.Minute)))); got != http.StatusOK {
			t.Errorf("token minted with the server's key: %d, want 200", got)
		}
	})

	rejected := []struct{ name, token string }{
		{"garbage", "not-a-token"},
		{"empty-ish", "x"},
		{"random base64", base64.RawURLEncoding.EncodeToString(bytes.Repeat([]byte{7}, 80))},
		{"signed with another key", other.Issue(a.BackendID, "e2e", time.Now().Add(time.Hour))},
		{"expired", signer.Issue(a.BackendID, "e2e", time.Now().Add(-time.Second))},
		{"tampered signature", flipByte(t, a.Token, -1)},
		{"tampered expiry", flipByte(t, a.Token, 5)},
		{"truncated", a.Token[:len(a.Token)-4]},
		{"re-pointed at another backend", swapClaim(t, a.Token, a.BackendID, b.BackendID)},
		{"re-bound to another user", swapClaim(t, a.Token, "e2e", "eve")},
	}
	for _, tt := range rejected {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := get(t, proxyURL(tt.token)+"anything", nil)
			if resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("status %d %s, want 401", resp.StatusCode, body)
			}
		})
	}

	t.Run("no token", func(t *testing.T) {
		resp, _ := get(t, s.Proxy+"/", nil)
		if resp.StatusCode != http.StatusUnauthorized && resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET proxy root: %d, want 401 or 404", resp.StatusCode)
		}
	})

	t.Run("user bound to token", func(t *testing.T) {
		c1 := s.connect(t, api.ConnectRequest{Key: "tok-a", User: "alice"})
		c2 := s.connect(t, api.ConnectRequest{Key: "tok-a", User: "bob"})
		if u := echo(t, c1.URL, "", nil).Headers.Get("X-Berth-User"); u != "alice" {
			t.Errorf("alice's token: X-Berth-User %q", u)
		}
		if u := echo(t, c2.URL, "", nil).Headers.Get("X-Berth-User"); u != "bob" {
			t.Errorf("bob's token: X-Berth-User %q", u)
		}
	})

	t.Run("terminated backend is gone", func(t *testing.T) {
		s.terminate(t, b.BackendID, true)
		s.waitTerminated(t, b.BackendID, 10*time.Second)
		resp, body := get(t, b.URL, nil)
		if resp.StatusCode != http.StatusGone {
			t.Errorf("token of a terminated backend: %d %s, want 410", resp.StatusCode, body)
		}
		// Still 401 for a bad token of the same backend: auth comes first.
		resp, _ = get(t, proxyURL(flipByte(t, b.Token, -1)), nil)
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("tampered token of a terminated backend: %d, want 401", resp.StatusCode)
		}
	})
}

// flipByte changes one byte of a token's decoded form (negative i counts
// from the end) and re-encodes it.
func flipByte(t *testing.T, tok string, i int) string {
	t.Helper()
	raw, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		t.Fatalf("token %q is not base64url: %v", tok, err)
	}
	if i < 0 {
		i += len(raw)
	}
	raw[i] ^= 0x01
	return base64.RawURLEncoding.EncodeToString(raw)
}

// swapClaim replaces one claim inside a token (old and new must have the
// same length) without re-signing it.
func swapClaim(t *testing.T, tok, old, new string) string {
	t.Helper()
	if len(old) != len(new) {
		t.Fatalf("swap %q for %q: lengths differ", old, new)
	}
	raw, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		t.Fatalf("token %q is not base64url: %v", tok, err)
	}
	// The claims end where the 32-byte MAC begins; the user is last.
	i := bytes.LastIndex(raw[:len(raw)-32], []byte(old))
	if i < 0 {
		t.Fatalf("token does not carry %q in the clear", old)
	}
	copy(raw[i:], new)
	return base64.RawURLEncoding.EncodeToString(raw)
}
