package token

import (
	"crypto/hmac"
	"encoding/base32"
	"errors"
	"strings"
)

// A host label names a backend in a DNS name (<label>.<suffix>) without
// naming its key: it is the backend id's random part, a hyphen, and a MAC
// of the id under the signing key, so that only labels Berth issued parse.
//
//	bk_abcdefghijklmnop  →  abcdefghijklmnop-qrstuvwxyz234
//
// The MAC input starts with labelDomain, never with the version byte that
// starts every token's payload, so a label's MAC can never pass for a
// token's or the other way around.

const (
	idPrefix    = "bk_"
	labelMACLen = 13 // base32 characters: 65 bits
	labelDomain = "berth host label\x00"
	maxLabelLen = 63 // RFC 1035
)

var labelEnc = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// ErrBadLabel is what BackendOfLabel returns for a label Berth did not issue.
var ErrBadLabel = errors.New("token: not a backend host label")

// HostLabel returns the DNS label for backendID, and false for an id that
// cannot make one (not bk_ followed by lowercase base32, or too long).
func (s *Signer) HostLabel(backendID string) (string, bool) {
	id, ok := strings.CutPrefix(backendID, idPrefix)
	if !ok || id == "" || len(id)+1+labelMACLen > maxLabelLen || !isLabelChars(id) {
		return "", false
	}
	return id + "-" + s.labelMAC(backendID), true
}

// BackendOfLabel returns the backend id that label names, or ErrBadLabel.
// label must be lowercase, as HostLabel made it (DNS names are
// case-insensitive: lower a Host header before calling).
func (s *Signer) BackendOfLabel(label string) (string, error) {
	id, mac, ok := strings.Cut(label, "-")
	if !ok || id == "" || len(mac) != labelMACLen || !isLabelChars(id) {
		return "", ErrBadLabel
	}
	backendID := idPrefix + id
	if !hmac.Equal([]byte(s.labelMAC(backendID)), []byte(mac)) {
		return "", ErrBadLabel
	}
	return backendID, nil
}

func (s *Signer) labelMAC(backendID string) string {
	sc := s.pool.Get().(*scratch)
	defer s.pool.Put(sc)
	sc.mac.Reset()
	sc.mac.Write([]byte(labelDomain))
	sc.mac.Write([]byte(backendID))
	sum := sc.mac.Sum(sc.sum[:0])
	return labelEnc.EncodeToString(sum)[:labelMACLen]
}

func isLabelChars(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || '2' <= c && c <= '7') {
			return false
		}
	}
	return true
}
