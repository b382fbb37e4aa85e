package stores_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berthhq/berth/store/sqlite"
	"github.com/berthhq/berth/store/stores"
)

func TestOpen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	for _, u := range []string{"sqlite:" + filepath.Join(dir, "a.db"), "sqlite://" + filepath.Join(dir, "b.db")} {
		st, err := stores.Open(ctx, u)
		if err != nil {
			t.Fatalf("Open(%q): %v", u, err)
		}
		if _, ok := st.(*sqlite.Store); !ok {
			t.Errorf("Open(%q) = %T, want *sqlite.Store", u, st)
		}
		st.Close()
	}
	for _, tt := range []struct{ url, want string }{
		{"", "use sqlite:PATH"},
		{"sqlite:", "names no file"},
		{"mysql://u:secret@h/db", `scheme "mysql"`},
		{"postgres://u:secret@h/db", "not available in this build"},
	} {
		_, err := stores.Open(ctx, tt.url)
		if !errors.Is(err, stores.ErrUnknown) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Open(%q) = %v, want ErrUnknown saying %q", tt.url, err, tt.want)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("Open(%q) error shows the password: %v", tt.url, err)
		}
	}
}
