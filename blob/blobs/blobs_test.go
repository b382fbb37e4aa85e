package blobs_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berthhq/berth/blob"
	"github.com/berthhq/berth/blob/blobs"
	"github.com/berthhq/berth/blob/file"
)

func TestOpen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	for _, u := range []string{"file:" + filepath.Join(dir, "a"), "file://" + filepath.Join(dir, "b"), filepath.Join(dir, "c")} {
		s, err := blobs.Open(ctx, u, blob.Options{})
		if err != nil {
			t.Fatalf("Open(%q): %v", u, err)
		}
		if _, ok := s.(*file.Store); !ok {
			t.Errorf("Open(%q) = %T; want *file.Store", u, s)
		}
		s.Close()
	}
	for _, tt := range []struct{ url, want string }{
		{"", "no store"},
		{"ftp://x", "unknown scheme"},
		{"mysql://user:hunter2@db/x", "unknown scheme"},
	} {
		_, err := blobs.Open(ctx, tt.url, blob.Options{})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Open(%q): err = %v; want one saying %q", tt.url, err, tt.want)
		}
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("Open(%q): the error shows the password: %v", tt.url, err)
		}
	}
}
