package token

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
)

var (
	testKey  = bytes.Repeat([]byte("k"), MinKeyLen)
	otherKey = bytes.Repeat([]byte("o"), MinKeyLen)
	now      = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
)

func newSigner(t testing.TB, key []byte) *Signer {
	t.Helper()
	s, err := NewSigner(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestNewSigner(t *testing.T) {
	if _, err := NewSigner(make([]byte, MinKeyLen-1)); err == nil {
		t.Error("NewSigner accepted a 31-byte key")
	}
	if _, err := NewSigner(make([]byte, MinKeyLen)); err != nil {
		t.Errorf("NewSigner(32 bytes) = %v", err)
	}
}

func TestSigner_IssueVerify(t *testing.T) {
	s := newSigner(t, testKey)
	exp := now.Add(time.Hour)
	tok := s.Issue("bk_123", "alice", exp)

	got, err := s.Verify(tok, now)
	if err != nil {
		t.Fatalf("Verify = %v", err)
	}
	want := Claims{BackendID: "bk_123", User: "alice", Expires: exp}
	if got.BackendID != want.BackendID || got.User != want.User || !got.Expires.Equal(want.Expires) {
		t.Errorf("Verify = %+v, want %+v", got, want)
	}
	if strings.ContainsAny(tok, "/+=?#%") {
		t.Errorf("token %q is not URL-path safe", tok)
	}
	if again := s.Issue("bk_123", "alice", exp); again == tok {
		t.Error("two tokens for the same backend and user are equal")
	}
}

func TestSigner_VerifyRejects(t *testing.T) {
	s := newSigner(t, testKey)
	tok := s.Issue("bk_123", "alice", now.Add(time.Hour))
	other := newSigner(t, otherKey).Issue("bk_123", "alice", now.Add(time.Hour))

	// Replace the backend id with another of the same length, keeping the
	// original MAC: the token now claims another backend.
	raw, _ := enc.DecodeString(tok)
	copy(raw[headerLen+1:], "bk_999")
	otherBackend := enc.EncodeToString(raw)

	// Flip one bit in the middle of the token's bytes.
	raw, _ = enc.DecodeString(tok)
	raw[len(raw)/2] ^= 1
	tampered := enc.EncodeToString(raw)

	// A MAC of all zeros: what a forger without the key can produce.
	raw, _ = enc.DecodeString(tok)
	clear(raw[len(raw)-macLen:])
	forged := enc.EncodeToString(raw)

	tests := []struct {
		name string
		tok  string
		now  time.Time
		want error
	}{
		{"empty", "", now, ErrMalformed},
		{"garbage", "not-a-token", now, ErrMalformed},
		{"not base64", strings.Repeat("!", 120), now, ErrMalformed},
		{"padded", tok + "==", now, ErrMalformed},
		{"truncated", tok[:len(tok)-4], now, ErrBadSignature},
		{"forged", forged, now, ErrBadSignature},
		{"tampered", tampered, now, ErrBadSignature},
		{"other backend", otherBackend, now, ErrBadSignature},
		{"wrong key", other, now, ErrBadSignature},
		{"expired", tok, now.Add(time.Hour), ErrExpired},
		{"long expired", tok, now.Add(1000 * time.Hour), ErrExpired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.Verify(tt.tok, tt.now)
			if !errors.Is(err, tt.want) {
				t.Errorf("Verify = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestSigner_Long(t *testing.T) {
	// Larger than the pooled buffers: still round trips.
	s := newSigner(t, testKey)
	user := strings.Repeat("u", 1000)
	c, err := s.Verify(s.Issue("bk_1", user, now.Add(time.Minute)), now)
	if err != nil || c.User != user || c.BackendID != "bk_1" {
		t.Errorf("Verify = %v, %v", c.BackendID, err)
	}
}

func TestPlausible(t *testing.T) {
	s := newSigner(t, testKey)
	tok := s.Issue("", "", now) // the smallest there is
	for _, tt := range []struct {
		in   string
		want bool
	}{
		{tok, true},
		{s.Issue("bk_"+strings.Repeat("x", 200), strings.Repeat("u", 300), now), true},
		{tok[:len(tok)-1], false}, // one byte short of the smallest token
		{"B" + tok[1:], false},    // another version
		{tok[:40] + "." + tok[41:], false},
		{tok[:40] + "%" + tok[41:], false},
		{tok[:40] + "\r" + tok[40:], false}, // the decoder would skip it
		{tok[:40] + "\n" + tok[40:], false},
		{"", false},
		{"index.html", false},
		{"assets", false},
	} {
		if got := Plausible(tt.in); got != tt.want {
			t.Errorf("Plausible(%q) = %v, want %v", tt.in, got, tt.want)
		}
		if _, err := s.Verify(tt.in, now.Add(-time.Second)); !tt.want && !errors.Is(err, ErrMalformed) {
			t.Errorf("Verify(%q) = %v, want ErrMalformed", tt.in, err)
		}
	}
}

func FuzzVerify(f *testing.F) {
	s := newSigner(f, testKey)
	f.Add(s.Issue("bk_1", "alice", now.Add(time.Hour)), "bk_1", "alice", now.Unix()+3600)
	f.Add("", "", "", int64(0))
	f.Add("AQ", "bk_2", "", int64(-1))
	f.Add(strings.Repeat("A", 100), "bk_\x00", "ü", int64(1<<62))
	f.Fuzz(func(t *testing.T, tok, backendID, user string, exp int64) {
		// Arbitrary input never panics, and only the seed token we issued
		// (to bk_1 for alice) verifies.
		if c, err := s.Verify(tok, now); err == nil && (c.BackendID != "bk_1" || c.User != "alice") {
			t.Fatalf("Verify accepted %q: %+v", tok, c)
		}
		if _, err := s.Verify(tok, now); !Plausible(tok) && !errors.Is(err, ErrMalformed) {
			t.Fatalf("Plausible(%q) = false, but Verify = %v, not ErrMalformed", tok, err)
		}

		exp %= 1 << 40 // keep time.Unix(exp, 0).Unix() == exp
		expires := time.Unix(exp, 0)
		issued := s.Issue(backendID, user, expires)
		if !Plausible(issued) || !Plausible([]byte(issued)) {
			t.Fatalf("Plausible(Issue(%q, %q, %d)) = false", backendID, user, exp)
		}
		c, err := s.Verify(issued, expires.Add(-time.Second))
		if err != nil {
			t.Fatalf("Verify(Issue(%q, %q, %d)) = %v", backendID, user, exp, err)
		}
		if c.BackendID != backendID || c.User != user || c.Expires.Unix() != exp {
			t.Fatalf("round trip = %q %q %d, want %q %q %d", c.BackendID, c.User, c.Expires.Unix(), backendID, user, exp)
		}
		if _, err := s.Verify(issued, expires); !errors.Is(err, ErrExpired) {
			t.Fatalf("Verify at expiry = %v, want ErrExpired", err)
		}
	})
}

func BenchmarkVerify(b *testing.B) {
	s := newSigner(b, testKey)
	tok := s.Issue("bk_01JABCDEF0123456789", "alice@example.com", now.Add(time.Hour))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Verify(tok, now); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkIssue(b *testing.B) {
	s := newSigner(b, testKey)
	exp := now.Add(time.Hour)
	b.ReportAllocs()
	for b.Loop() {
		s.Issue("bk_01JABCDEF0123456789", "alice@example.com", exp)
	}
}
