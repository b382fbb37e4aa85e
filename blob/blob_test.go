package blob_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/blob"
)

func TestNewVersion(t *testing.T) {
	now := time.Date(2026, 5, 23, 19, 45, 1, 123456789, time.UTC)
	a, b := blob.NewVersion(now), blob.NewVersion(now)
	if a == b {
		t.Fatalf("two versions at the same instant are equal: %s", a)
	}
	if !strings.HasPrefix(a, "20260523T194501.123456Z-") || !blob.ValidVersion(a) {
		t.Fatalf("NewVersion = %q", a)
	}
}

func TestValidVersion(t *testing.T) {
	for v, want := range map[string]bool{
		"20260523T194501.123456Z-0123456789abcdef": true,
		"v1": true, "": false, ".": false, "..": false, ".x": false,
		"a/b": false, "../x": false, "a b": false, strings.Repeat("x", 65): false,
	} {
		if got := blob.ValidVersion(v); got != want {
			t.Errorf("ValidVersion(%q) = %v; want %v", v, got, want)
		}
	}
}

func TestErrors(t *testing.T) {
	if !errors.Is(blob.ErrNotFound, berth.ErrNotFound) {
		t.Error("blob.ErrNotFound does not match berth.ErrNotFound")
	}
	err := blob.Fenced("k", 1, 2)
	var fe *blob.FencedError
	if !errors.Is(err, blob.ErrFenced) || !errors.As(err, &fe) || fe.Current != 2 {
		t.Errorf("Fenced: %#v", err)
	}
	if err := blob.ValidateKey("a b"); !errors.Is(err, blob.ErrInvalidKey) {
		t.Errorf("ValidateKey(\"a b\") = %v", err)
	}
}
