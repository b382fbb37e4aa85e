// Package token issues and verifies the proxy's access tokens: signed,
// unguessable, expiring strings bound to one backend and one user, checked
// with no database round trip.
//
// A token is base64url (no padding) of
//
//	version(1) | expires unix seconds(8) | nonce(16) | uvarint len(backend) | backend | user | HMAC-SHA256(32)
//
// where the MAC covers everything before it. Tokens carry the backend id and
// user in the clear: they must never carry secrets. The package keeps no
// state beyond the key, so it can never revoke a token; short expiry does.
package token

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"strings"
	"sync"
	"time"
)

// MinKeyLen is the shortest signing key NewSigner accepts.
const MinKeyLen = 32

const (
	version  = 1
	nonceLen = 16
	macLen   = sha256.Size
	// headerLen is version, expiry and nonce; the smallest payload adds a
	// one-byte length for an empty backend id.
	headerLen  = 1 + 8 + nonceLen
	minRawLen  = headerLen + 1 + macLen
	bufLen     = 256 // decoded size served from the pool; larger tokens allocate
	poolSrcLen = 344 // base64 of bufLen bytes
)

var enc = base64.RawURLEncoding.Strict()

// Errors returned by Verify.
var (
	ErrMalformed    = errors.New("token: malformed")
	ErrBadSignature = errors.New("token: bad signature")
	ErrExpired      = errors.New("token: expired")
)

// Claims is what a valid token says.
type Claims struct {
	BackendID string
	User      string
	Expires   time.Time
}

// Signer issues and verifies tokens with one key. It is safe for concurrent
// use.
type Signer struct {
	pool sync.Pool // of *scratch
}

// scratch is per-call working memory, pooled so that Verify, which runs on
// every proxied request, allocates only the claims' strings.
type scratch struct {
	mac hash.Hash
	src [poolSrcLen]byte
	raw [bufLen]byte
	sum [macLen]byte
}

// NewSigner returns a Signer for key, which must be at least MinKeyLen bytes
// of secret, random data.
func NewSigner(key []byte) (*Signer, error) {
	if len(key) < MinKeyLen {
		return nil, fmt.Errorf("token: key is %d bytes; at least %d required", len(key), MinKeyLen)
	}
	key = append([]byte(nil), key...)
	s := &Signer{}
	s.pool.New = func() any { return &scratch{mac: hmac.New(sha256.New, key)} }
	return s, nil
}

// Issue returns a new token for user on backendID, valid until expires
// (truncated to the second). Every call returns a different token.
func (s *Signer) Issue(backendID, user string, expires time.Time) string {
	b := make([]byte, 0, headerLen+binary.MaxVarintLen64+len(backendID)+len(user)+macLen)
	b = append(b, version)
	b = binary.BigEndian.AppendUint64(b, uint64(expires.Unix()))
	b = b[:headerLen]
	rand.Read(b[headerLen-nonceLen:]) // never fails; crashes the program instead
	b = binary.AppendUvarint(b, uint64(len(backendID)))
	b = append(b, backendID...)
	b = append(b, user...)

	sc := s.pool.Get().(*scratch)
	sc.mac.Reset()
	sc.mac.Write(b)
	b = sc.mac.Sum(b)
	s.pool.Put(sc)
	return enc.EncodeToString(b)
}

// Verify checks tok and returns its claims. It returns ErrMalformed for
// anything that is not a token, ErrBadSignature for a token not signed with
// this Signer's key (forged, tampered with, or from another key), and
// ErrExpired for a genuine token whose expiry is not after now (the claims
// are returned with ErrExpired too, for logging).
func (s *Signer) Verify(tok string, now time.Time) (Claims, error) {
	n := enc.DecodedLen(len(tok))
	if n < minRawLen {
		return Claims{}, ErrMalformed
	}
	// The decoder skips CR and LF; a token never holds them, so one that
	// does is not a token, however it decodes.
	if strings.IndexByte(tok, '\r') >= 0 || strings.IndexByte(tok, '\n') >= 0 {
		return Claims{}, ErrMalformed
	}
	sc := s.pool.Get().(*scratch)
	defer s.pool.Put(sc)

	var src, raw []byte
	if n <= bufLen {
		src = append(sc.src[:0], tok...)
		raw = sc.raw[:n]
	} else {
		src = []byte(tok)
		raw = make([]byte, n)
	}
	if _, err := enc.Decode(raw, src); err != nil {
		return Claims{}, ErrMalformed
	}
	if raw[0] != version {
		return Claims{}, ErrMalformed
	}
	payload, mac := raw[:n-macLen], raw[n-macLen:]
	sc.mac.Reset()
	sc.mac.Write(payload)
	if !hmac.Equal(sc.mac.Sum(sc.sum[:0]), mac) {
		return Claims{}, ErrBadSignature
	}

	exp := int64(binary.BigEndian.Uint64(payload[1:9]))
	rest := payload[headerLen:]
	idLen, k := binary.Uvarint(rest)
	if k <= 0 || idLen > uint64(len(rest)-k) {
		return Claims{}, ErrMalformed
	}
	rest = rest[k:]
	both := string(rest) // one allocation for both strings
	c := Claims{
		BackendID: both[:idLen],
		User:      both[idLen:],
		Expires:   time.Unix(exp, 0),
	}
	if !now.Before(c.Expires) {
		return c, ErrExpired
	}
	return c, nil
}

// Plausible reports whether tok could be a token: Verify returns
// ErrMalformed for every tok it reports false for. It costs a look at each
// byte, no MAC, for a caller that must tell a token from an ordinary path
// segment (the proxy, on a backend's host) before paying for Verify.
func Plausible[T string | []byte](tok T) bool {
	if enc.DecodedLen(len(tok)) < minRawLen {
		return false
	}
	// The first decoded byte is the version: its top six bits are the
	// first character's.
	if tok[0] != encodeURL[version>>2] {
		return false
	}
	for i := 0; i < len(tok); i++ {
		if c := tok[i]; !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// encodeURL is enc's alphabet.
const encodeURL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
