package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/berthhq/berth/api"
)

const defaultAPI = "http://127.0.0.1:7070"

// clientOptions are the flags every client verb shares.
type clientOptions struct {
	API    string
	APIKey string
}

func (o *clientOptions) flags(fs *flags) {
	// BERTH_API is the name this had before BERTH_URL; both are read.
	fs.StringVar(&o.API, "api", envOr("BERTH_URL", envOr("BERTH_API", defaultAPI)), "control API `URL` (BERTH_URL)")
	fs.StringVar(&o.APIKey, "api-key", envOr("BERTH_API_KEY", ""), "API `key`; berth dev needs none (BERTH_API_KEY)")
}

func (o *clientOptions) client() *api.Client {
	return api.NewClient(o.API, o.APIKey, nil)
}

// explain rewrites the errors a person can act on into what to do next; the
// rest pass through unchanged. notFound, if given, is the hint for a 404.
func (o *clientOptions) explain(err error, notFound ...string) error {
	var op *net.OpError
	var apiErr *api.Error
	switch {
	case errors.Is(err, context.Canceled):
		return err
	case errors.As(err, &op) && op.Op == "dial":
		return fmt.Errorf("cannot reach Berth at %s — is `berth dev` running? Point at another with --api or BERTH_URL. (%v)", o.API, op.Err)
	case errors.As(err, &apiErr) && apiErr.Status == http.StatusUnauthorized:
		if o.APIKey == "" {
			return fmt.Errorf("%w (give the server's API key with --api-key or BERTH_API_KEY)", err)
		}
		return fmt.Errorf("%w (check --api-key or BERTH_API_KEY)", err)
	case errors.As(err, &apiErr) && apiErr.Status == http.StatusNotFound && len(notFound) > 0:
		return fmt.Errorf("%w (%s)", err, notFound[0])
	case errors.As(err, &apiErr) && apiErr.Status >= 500:
		return fmt.Errorf("%w (the server's log has the details)", err)
	}
	return err
}

// oneID returns the single backend id a verb takes.
func oneID(args []string, usage string) (string, error) {
	switch len(args) {
	case 0:
		return "", usagef("which backend? usage: %s (list them with: berth ps)", usage)
	case 1:
		return args[0], nil
	}
	return "", usagef("expected one backend id, got %d arguments; usage: %s", len(args), usage)
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// now is the clock ages are counted to; tests set it, so tables of ages
// can be compared whole.
var now = time.Now

// since formats a duration the way people read an age: 45s, 12m, 3h, 5d.
func since(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(max(d, 0)/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d/time.Hour))
	}
	return fmt.Sprintf("%dd", int(d/(24*time.Hour)))
}

// dash shows an empty table cell as "-".
func dash(s string) string {
	if strings.TrimSpace(s) == "" {
		return "-"
	}
	return s
}
