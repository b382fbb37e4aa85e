package token

import (
	"errors"
	"strings"
	"testing"
)

func TestSigner_HostLabel(t *testing.T) {
	s := newSigner(t, []byte(strings.Repeat("k", 32)))
	other := newSigner(t, []byte(strings.Repeat("o", 32)))
	const id = "bk_abcdefghijklmnop"
	label, ok := s.HostLabel(id)
	if !ok {
		t.Fatalf("HostLabel(%q) refused", id)
	}
	if strings.Contains(label, "_") || strings.ToLower(label) != label || len(label) > 63 {
		t.Fatalf("label %q is not a lowercase DNS label", label)
	}
	if got, err := s.BackendOfLabel(label); err != nil || got != id {
		t.Fatalf("BackendOfLabel(%q) = %q, %v; want %q", label, got, err, id)
	}
	again, _ := s.HostLabel(id)
	if again != label {
		t.Errorf("HostLabel is not stable: %q then %q", label, again)
	}

	forged := []string{
		"",
		"abcdefghijklmnop",              // no MAC
		"abcdefghijklmnop-",             // empty MAC
		"abcdefghijklmnoq" + label[16:], // another id, this id's MAC
		label[:len(label)-1] + flip(label[len(label)-1]), // MAC tampered with
		strings.ToUpper(label),                           // not lowered
		label + "a",                                      // MAC too long
		"abc_def-" + label[17:],                          // not base32
	}
	if l, _ := other.HostLabel(id); true {
		forged = append(forged, l) // another key's
	}
	for _, l := range forged {
		if got, err := s.BackendOfLabel(l); !errors.Is(err, ErrBadLabel) {
			t.Errorf("BackendOfLabel(%q) = %q, %v; want ErrBadLabel", l, got, err)
		}
	}

	for _, bad := range []string{"", "bk_", "abcdefgh", "bk_ABC", "bk_a-b", "bk_" + strings.Repeat("a", 60)} {
		if l, ok := s.HostLabel(bad); ok {
			t.Errorf("HostLabel(%q) = %q, want refused", bad, l)
		}
	}
}

func flip(c byte) string {
	if c == 'a' {
		return "b"
	}
	return "a"
}

func FuzzBackendOfLabel(f *testing.F) {
	s := newSigner(f, []byte(strings.Repeat("k", 32)))
	l, _ := s.HostLabel("bk_abcdefghijklmnop")
	f.Add(l)
	f.Add("a-b")
	f.Fuzz(func(t *testing.T, label string) {
		id, err := s.BackendOfLabel(label)
		if err != nil {
			return
		}
		if back, ok := s.HostLabel(id); !ok || back != label {
			t.Fatalf("label %q parsed as %q, which labels as %q", label, id, back)
		}
	})
}
