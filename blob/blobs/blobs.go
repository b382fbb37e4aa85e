// Package blobs opens a blob store by URL. It is the one place that knows
// every adapter, so the adapters need not know each other; Berth's wiring
// calls Open with the --blobs flag.
package blobs

import (
	"context"
	"fmt"
	"strings"

	"github.com/berthhq/berth/blob"
	"github.com/berthhq/berth/blob/file"
	"github.com/berthhq/berth/blob/postgres"
	"github.com/berthhq/berth/blob/s3"
)

// Open opens the store rawURL names:
//
//	file:DIR, file:///abs/dir, or a bare path   a local directory
//	s3://bucket/prefix?endpoint=…&region=…&path_style=true
//	postgres://… or postgresql://…              (pool_max_conns=N, chunk_kb=N)
func Open(ctx context.Context, rawURL string, opts blob.Options) (blob.Store, error) {
	scheme, _, ok := strings.Cut(rawURL, ":")
	if !ok || strings.ContainsAny(scheme, "/.") {
		scheme = "" // a bare path, or a relative one containing ':'
	}
	switch scheme {
	case "file":
		return file.Open(ctx, rawURL, opts)
	case "":
		if rawURL == "" {
			return nil, fmt.Errorf("blobs: no store given; use file:DIR, s3://bucket/prefix or postgres://…")
		}
		return file.New(rawURL, opts)
	case "s3":
		return s3.Open(ctx, rawURL, opts)
	case "postgres", "postgresql":
		return postgres.Open(ctx, rawURL, opts)
	}
	return nil, fmt.Errorf("blobs: %q: unknown scheme %q; use file:DIR, s3://bucket/prefix or postgres://…", redact(rawURL), scheme)
}

// redact hides what may be a password in a URL we could not parse as ours.
func redact(u string) string {
	if i := strings.Index(u, "@"); i >= 0 {
		if j := strings.Index(u, "://"); j >= 0 && j < i {
			return u[:j+3] + "…" + u[i:]
		}
	}
	return u
}
