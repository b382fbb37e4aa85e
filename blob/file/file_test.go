package file_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berthhq/berth/blob"
	"github.com/berthhq/berth/blob/blobtest"
	"github.com/berthhq/berth/blob/file"
)

func TestStore(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "blobs")
	blobtest.Run(t, func(t *testing.T, opts blob.Options) blob.Store {
		s, err := file.New(dir, opts)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

// TestStore_Confined writes every tricky key and checks that nothing
// appeared outside the store's directory, and that every file inside it is
// where the layout says.
func TestStore_Confined(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "blobs")
	s, err := file.New(dir, blob.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	for _, k := range blobtest.TrickyKeys {
		if _, err := s.Put(ctx, k, 1, strings.NewReader("x")); err != nil {
			t.Fatalf("Put(%q): %v", k, err)
		}
	}
	ents, err := os.ReadDir(parent)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 || ents[0].Name() != "blobs" {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Fatalf("files outside the store's directory: %v", names)
	}
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(dir, p)
		parts := strings.Split(rel, string(filepath.Separator))
		if rel != "." && parts[0] != "keys" || len(parts) > 5 {
			t.Errorf("unexpected path %s", rel)
		}
		return nil
	})
}

// TestStore_SymlinkedKeyDir plants a symlink where a key's directory would
// be, pointing outside the store: the store must not follow it out.
func TestStore_SymlinkedKeyDir(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "blobs")
	outside := filepath.Join(parent, "outside")
	os.Mkdir(outside, 0o755)
	s, err := file.New(dir, blob.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	key := "victim"
	if _, err := s.Put(ctx, key, 1, strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
	// Find the key's directory and replace it with a symlink out.
	matches, _ := filepath.Glob(filepath.Join(dir, "keys", "*", "*"))
	if len(matches) != 1 {
		t.Fatalf("key directories: %v", matches)
	}
	os.RemoveAll(matches[0])
	if err := os.Symlink(outside, matches[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, key, 1, strings.NewReader("escaped")); err == nil {
		t.Error("Put through a symlink leading out of the store succeeded")
	}
	ents, _ := os.ReadDir(outside)
	if len(ents) != 0 {
		t.Fatalf("the store wrote outside its directory: %d entries in %s", len(ents), outside)
	}
}

func TestParseURL(t *testing.T) {
	tests := []struct {
		url, want string
		ok        bool
	}{
		{"file:blobs", "blobs", true},
		{"file:./.berth/blobs", "./.berth/blobs", true},
		{"file:/var/lib/berth", "/var/lib/berth", true},
		{"file:///var/lib/berth", "/var/lib/berth", true},
		{"file://localhost/var/lib/berth", "/var/lib/berth", true},
		{"file://elsewhere/x", "", false},
		{"file:", "", false},
		{"s3://bucket", "", false},
	}
	for _, tt := range tests {
		got, err := file.ParseURL(tt.url)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseURL(%q) = %q, %v; want %q, ok=%v", tt.url, got, err, tt.want, tt.ok)
		}
	}
}
