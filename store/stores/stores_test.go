package stores_test

import (
	"context"
	"errors"
	"net/url"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berthhq/berth/store"
	"github.com/berthhq/berth/store/postgres"
	"github.com/berthhq/berth/store/postgres/pgtest"
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
	} {
		_, err := stores.Open(ctx, tt.url)
		if !errors.Is(err, stores.ErrUnknown) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Open(%q) = %v, want ErrUnknown saying %q", tt.url, err, tt.want)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("Open(%q) error shows the password: %v", tt.url, err)
		}
	}
	// A postgres URL is the adapter's: a server that does not answer is a
	// failed open, not an unknown store, and the error keeps the password
	// hidden, in the userinfo or in the query.
	for _, u := range []string{
		"postgres://u:secret@127.0.0.1:1/db?connect_timeout=5",
		"postgresql://u@127.0.0.1:1/db?password=secret&connect_timeout=5",
	} {
		st, err := stores.Open(ctx, u)
		if err == nil {
			st.Close()
			t.Fatalf("Open(%q): no error from a server that does not listen", u)
		}
		if errors.Is(err, stores.ErrUnknown) || !strings.Contains(err.Error(), "stores: open postgres") {
			t.Errorf("Open(%q) = %v; want a failed open of postgres, not ErrUnknown", u, err)
		}
		if strings.Contains(err.Error(), "secret") {
			t.Errorf("Open(%q) error shows the password: %v", u, err)
		}
	}
}

// TestOpen_Postgres opens a real PostgreSQL store through both schemes.
func TestOpen_Postgres(t *testing.T) {
	ctx := context.Background()
	u, err := url.Parse(pgtest.URL(t, "berth_storestest"))
	if err != nil {
		t.Fatal(err)
	}
	for _, scheme := range []string{"postgres", "postgresql"} {
		u.Scheme = scheme
		st, err := stores.Open(ctx, u.String())
		if err != nil {
			t.Fatalf("Open(%s://…): %v", scheme, err)
		}
		if _, ok := st.(*postgres.Store); !ok {
			t.Errorf("Open(%s://…) = %T, want *postgres.Store", scheme, st)
		}
		if bs, err := st.Backends(ctx, store.Filter{}); err != nil || len(bs) != 0 {
			t.Errorf("Open(%s://…): Backends = %v, %v; want an empty store", scheme, bs, err)
		}
		st.Close()
	}
}
