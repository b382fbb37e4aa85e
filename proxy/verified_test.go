package proxy

import (
	"errors"
	"testing"
	"time"

	"github.com/berthhq/berth/token"
)

// A connection's remembered token answers for the same bytes only, and
// only until it expires.
func TestVerified(t *testing.T) {
	s, err := token.NewSigner(testKey)
	if err != nil {
		t.Fatal(err)
	}
	good := s.Issue("bk_1", "alice", now.Add(time.Minute))
	other := s.Issue("bk_2", "bob", now.Add(time.Hour))
	tampered := []byte(good)
	tampered[len(tampered)/2] ^= 1

	// A nil signer stands for "must be remembered": verify would panic
	// if it asked the signer.
	var v verified
	for i, tt := range []struct {
		tok     string
		at      time.Time
		signer  *token.Signer
		backend string
		err     error
	}{
		{good, now, s, "bk_1", nil},
		{good, now.Add(time.Second), nil, "bk_1", nil},
		{string(tampered), now, s, "", token.ErrMalformed},
		{good, now, nil, "bk_1", nil},
		{other, now, s, "bk_2", nil},
		{other, now, nil, "bk_2", nil},
		{good, now, s, "bk_1", nil},
		{good, now.Add(time.Minute), s, "", token.ErrExpired},
		{other, now.Add(time.Minute), s, "bk_2", nil},
	} {
		c, err := v.verify(tt.signer, []byte(tt.tok), tt.at)
		switch {
		case tt.err != nil && err == nil:
			t.Errorf("%d: verified %+v, want an error", i, c)
		case tt.err == nil && err != nil:
			t.Errorf("%d: %v, want %s", i, err, tt.backend)
		case tt.err == nil && c.BackendID != tt.backend:
			t.Errorf("%d: backend %s, want %s", i, c.BackendID, tt.backend)
		case tt.err != nil && !errors.Is(err, tt.err) && !errors.Is(err, token.ErrBadSignature):
			t.Errorf("%d: %v, want %v", i, err, tt.err)
		}
	}
}
