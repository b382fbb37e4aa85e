package cli

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/berthhq/berth/blob"
	"github.com/berthhq/berth/blob/blobs"
	"github.com/berthhq/berth/runtime"
)

// openBlobs opens the blob store named by --blobs.
func openBlobs(ctx context.Context, o *serverOptions, log *slog.Logger) (blob.Store, error) {
	spec := o.Blobs
	if spec == "" {
		// A bare path, not a file: URL: a data dir may hold '#' or '?'.
		spec = filepath.Join(o.DataDir, "blobs")
	}
	opts := blob.Options{History: o.History, Logger: log.With("component", "blobs")}
	st, err := blobs.Open(ctx, spec, opts)
	if err != nil {
		return nil, fmt.Errorf("--blobs %q: %w", spec, err)
	}
	return st, nil
}

// backendAPIURLs is where each runtime's backends reach the backend API.
func backendAPIURLs(addr string, rts map[string]runtime.Runtime) map[string]string {
	return map[string]string{"process": "http://" + addr}
}
