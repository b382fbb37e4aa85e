// Package manifest is the per-key record that the file and s3 adapters keep
// beside a key's immutable version bodies: the key's fence and its history.
// Both adapters commit by replacing the manifest atomically (a rename under a
// lock; a conditional PUT), so every fencing and history rule lives here, in
// one place, as pure logic.
package manifest

import (
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"encoding/json"
	"fmt"

	"github.com/berthhq/berth/blob"
)

// Manifest is one key's fence and history.
type Manifest struct {
	Key   string `json:"key"`
	Fence int64  `json:"fence"`
	// Rev grows with every change, so two different moments of a manifest
	// never have the same bytes (and so never the same S3 ETag).
	Rev int64 `json:"rev"`
	// Versions is the history, newest (current) first.
	Versions []blob.Info `json:"versions"`
}

// New returns the manifest of a key that has never been written.
func New(key string) *Manifest { return &Manifest{Key: key} }

// Decode parses a manifest and checks it belongs to key.
func Decode(key string, data []byte) (*Manifest, error) {
	m := new(Manifest)
	if err := json.Unmarshal(data, m); err != nil {
		return nil, fmt.Errorf("manifest of %q: %w", key, err)
	}
	if m.Key != key {
		return nil, fmt.Errorf("manifest of %q names key %q", key, m.Key)
	}
	return m, nil
}

// Encode serialises m.
func (m *Manifest) Encode() []byte {
	b, err := json.Marshal(m)
	if err != nil {
		panic(err) // plain struct: cannot fail
	}
	return b
}

// Current returns the current save, if any.
func (m *Manifest) Current() (blob.Info, bool) {
	if len(m.Versions) == 0 {
		return blob.Info{}, false
	}
	return m.Versions[0], true
}

// Find returns the save with the given version.
func (m *Manifest) Find(version string) (blob.Info, bool) {
	for _, v := range m.Versions {
		if v.Version == version {
			return v, true
		}
	}
	return blob.Info{}, false
}

// Has reports whether version is in the history.
func (m *Manifest) Has(version string) bool {
	_, ok := m.Find(version)
	return ok
}

// Check returns a *blob.FencedError when a write with token fence must be
// refused.
func (m *Manifest) Check(fence int64) error {
	if fence < m.Fence {
		return blob.Fenced(m.Key, fence, m.Fence)
	}
	return nil
}

// RaiseFence raises the fence to fence. changed is false when it already was
// there; a lower fence is refused with a *blob.FencedError.
func (m *Manifest) RaiseFence(fence int64) (changed bool, err error) {
	if err := m.Check(fence); err != nil {
		return false, err
	}
	if fence == m.Fence {
		return false, nil
	}
	m.Fence = fence
	m.Rev++
	return true, nil
}

// Commit makes info the current save, raises the fence to info.Fence, and
// trims the history to keep saves. It returns the versions trimmed away,
// whose bodies the caller deletes after the manifest is stored, or a
// *blob.FencedError (and leaves m unchanged) when info.Fence is too low.
func (m *Manifest) Commit(info blob.Info, keep int) (trimmed []string, err error) {
	if err := m.Check(info.Fence); err != nil {
		return nil, err
	}
	if keep < 1 {
		keep = 1
	}
	m.Fence = info.Fence
	m.Rev++
	m.Versions = append([]blob.Info{info}, m.Versions...)
	if len(m.Versions) > keep {
		for _, v := range m.Versions[keep:] {
			trimmed = append(trimmed, v.Version)
		}
		m.Versions = m.Versions[:keep:keep]
	}
	return trimmed, nil
}

// Clear empties the history (the fence stays) and returns what was in it.
func (m *Manifest) Clear() (removed []string) {
	for _, v := range m.Versions {
		removed = append(removed, v.Version)
	}
	m.Versions = nil
	m.Rev++
	return removed
}

// b32 is lower-case base32 without padding: safe in any file system (also
// case-insensitive ones) and in S3 object names, and at most 205 characters
// for a 128-byte key, under the common 255-byte file name limit.
var b32 = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// KeyPath returns the relative, '/'-separated location of key's files:
// "<2 hex digits of sha256(key)>/<base32(key)>". Keys are encoded, never used
// as paths, so "../x", "/etc/passwd" or "a/../b" are ordinary names; the
// hash prefix spreads keys over 256 directories.
func KeyPath(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:1]) + "/" + b32.EncodeToString([]byte(key))
}
