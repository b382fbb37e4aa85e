package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
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

func (o *clientOptions) flags(fs *flag.FlagSet) {
	fs.StringVar(&o.API, "api", envOr("BERTH_API", defaultAPI), "control API `URL` (BERTH_API)")
	fs.StringVar(&o.APIKey, "api-key", envOr("BERTH_API_KEY", ""), "API `key`; berth dev needs none (BERTH_API_KEY)")
}

func (o *clientOptions) client() *api.Client {
	return api.NewClient(o.API, o.APIKey, nil)
}

// explain rewrites the errors a person can act on into what to do next; the
// rest pass through unchanged.
func (o *clientOptions) explain(err error) error {
	var op *net.OpError
	var apiErr *api.Error
	switch {
	case errors.Is(err, context.Canceled):
		return err
	case errors.As(err, &op) && op.Op == "dial":
		return fmt.Errorf("cannot reach Berth at %s — is `berth dev` running? (%v)", o.API, op.Err)
	case errors.As(err, &apiErr) && apiErr.Status == http.StatusUnauthorized:
		if o.APIKey == "" {
			return fmt.Errorf("%w (give the server's API key with --api-key or BERTH_API_KEY)", err)
		}
		return fmt.Errorf("%w (check --api-key or BERTH_API_KEY)", err)
	}
	return err
}

// usageLine makes -h start with how to call the verb, then its flags.
func usageLine(fs *flag.FlagSet, line string) {
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: %s\n\nFlags:\n", line)
		fs.PrintDefaults()
	}
}

// parseInterspersed parses flags found anywhere among args, so both
// `berth logs -f ID` and `berth logs ID -f` work, and returns the other
// arguments in order. Everything after "--" is an argument.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var rest []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usagef("%v", err) // the flag package has printed the flags
		}
		left := fs.Args()
		if len(left) == 0 {
			return rest, nil
		}
		if n := len(args) - len(left); n > 0 && args[n-1] == "--" {
			return append(rest, left...), nil
		}
		rest = append(rest, left[0])
		args = left[1:]
	}
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
