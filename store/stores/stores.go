// Package stores opens Berth's record store by URL. It is the one place that
// knows every store adapter, as blob/blobs is for blob stores, so the
// adapters need not know each other; Berth's wiring calls Open with the
// --store flag. It never creates or migrates anything itself: each adapter
// does that in its own Open.
package stores

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/berthhq/berth/store"
	"github.com/berthhq/berth/store/postgres"
	"github.com/berthhq/berth/store/sqlite"
)

// ErrUnknown is returned (wrapped) for a URL whose scheme no adapter
// serves, so a caller can tell a mistyped flag from a store that failed to
// open.
var ErrUnknown = errors.New("stores: unknown store")

// Open opens the store rawURL names:
//
//	sqlite:PATH     an SQLite file (created if missing); the embedded default
//	postgres://…    PostgreSQL (also postgresql://…); pool_max_conns=N
//	                bounds its pool (default 8)
func Open(ctx context.Context, rawURL string) (store.Store, error) {
	scheme, rest, _ := strings.Cut(rawURL, ":")
	switch scheme {
	case "sqlite":
		path := strings.TrimPrefix(rest, "//")
		if path == "" {
			return nil, fmt.Errorf("%w: %q names no file; use sqlite:PATH", ErrUnknown, rawURL)
		}
		st, err := sqlite.Open(path)
		if err != nil {
			return nil, fmt.Errorf("stores: open %s: %w", rawURL, err)
		}
		return st, nil
	case "postgres", "postgresql":
		st, err := postgres.Open(ctx, rawURL)
		if err != nil {
			return nil, fmt.Errorf("stores: open %s: %w", redacted(rawURL), err)
		}
		return st, nil
	}
	// Only the scheme: the rest may hold a password.
	return nil, fmt.Errorf("%w: scheme %q; use sqlite:PATH or postgres://…", ErrUnknown, scheme)
}

// redacted is rawURL without its password (pgx also takes one in the
// query), to name it in an error.
func redacted(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "the postgres URL" // unparsable: show none of it
	}
	if q := u.Query(); q.Has("password") {
		q.Set("password", "xxxxx")
		u.RawQuery = q.Encode()
	}
	return u.Redacted()
}
