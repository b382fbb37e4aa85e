package manifest

import (
	"errors"
	"strings"
	"testing"

	"github.com/berthhq/berth/blob"
)

func TestManifest_Commit(t *testing.T) {
	m := New("k")
	var all []string
	for i, fence := range []int64{1, 1, 3, 3, 4} {
		v := string(rune('a' + i))
		all = append(all, v)
		trimmed, err := m.Commit(blob.Info{Version: v, Fence: fence}, 3)
		if err != nil {
			t.Fatalf("Commit %s: %v", v, err)
		}
		if want := max(0, len(all)-3); len(trimmed) != min(1, want) {
			t.Fatalf("Commit %s trimmed %v", v, trimmed)
		}
	}
	if got := versionsOf(m); got != "e d c" || m.Fence != 4 || m.Rev != 5 {
		t.Fatalf("after five commits: versions %q fence %d rev %d; want \"e d c\" 4 5", got, m.Fence, m.Rev)
	}
	before := versionsOf(m)
	_, err := m.Commit(blob.Info{Version: "x", Fence: 2}, 3)
	var fe *blob.FencedError
	if !errors.As(err, &fe) || fe.Fence != 2 || fe.Current != 4 || !errors.Is(err, blob.ErrFenced) {
		t.Fatalf("stale Commit: err = %v; want a FencedError{2, 4}", err)
	}
	if versionsOf(m) != before || m.Rev != 5 {
		t.Fatal("a refused Commit changed the manifest")
	}
}

func TestManifest_RaiseFence(t *testing.T) {
	tests := []struct {
		from, to   int64
		changed    bool
		fenced     bool
		fenceAfter int64
	}{
		{0, 5, true, false, 5},
		{5, 5, false, false, 5},
		{5, 4, false, true, 5},
		{5, 9, true, false, 9},
	}
	for _, tt := range tests {
		m := &Manifest{Key: "k", Fence: tt.from}
		changed, err := m.RaiseFence(tt.to)
		if changed != tt.changed || errors.Is(err, blob.ErrFenced) != tt.fenced || m.Fence != tt.fenceAfter {
			t.Errorf("RaiseFence %d→%d = %v, %v (fence %d); want %v, fenced=%v (fence %d)",
				tt.from, tt.to, changed, err, m.Fence, tt.changed, tt.fenced, tt.fenceAfter)
		}
	}
}

func TestManifest_ClearKeepsFence(t *testing.T) {
	m := New("k")
	m.Commit(blob.Info{Version: "a", Fence: 7}, 10)
	if removed := m.Clear(); len(removed) != 1 || removed[0] != "a" {
		t.Fatalf("Clear removed %v", removed)
	}
	if m.Fence != 7 || len(m.Versions) != 0 {
		t.Fatalf("after Clear: fence %d, %d versions", m.Fence, len(m.Versions))
	}
}

func TestDecode(t *testing.T) {
	m := New("a/b")
	m.Commit(blob.Info{Key: "a/b", Version: "v1", Fence: 2, Size: 3}, 10)
	got, err := Decode("a/b", m.Encode())
	if err != nil || got.Fence != 2 || versionsOf(got) != "v1" {
		t.Fatalf("Decode(Encode) = %+v, %v", got, err)
	}
	if _, err := Decode("other", m.Encode()); err == nil {
		t.Fatal("Decode accepted another key's manifest")
	}
	if _, err := Decode("a/b", []byte("{")); err == nil {
		t.Fatal("Decode accepted garbage")
	}
}

func TestKeyPath(t *testing.T) {
	seen := map[string]string{}
	for _, k := range []string{"a", "A", "a/b", "../x", "/etc/passwd", "a/../../b", ".", "..", strings.Repeat("@", 128)} {
		p := KeyPath(k)
		dir, name, ok := strings.Cut(p, "/")
		if !ok || len(dir) != 2 || strings.ContainsAny(name, "/.") || len(name) > 255 || strings.ToLower(name) != name {
			t.Errorf("KeyPath(%q) = %q: not two safe path segments", k, p)
		}
		if other, dup := seen[strings.ToLower(p)]; dup {
			t.Errorf("KeyPath(%q) = KeyPath(%q) (ignoring case)", k, other)
		}
		seen[strings.ToLower(p)] = k
	}
}

func versionsOf(m *Manifest) string {
	var vs []string
	for _, v := range m.Versions {
		vs = append(vs, v.Version)
	}
	return strings.Join(vs, " ")
}
