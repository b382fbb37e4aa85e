package cli

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
)

func init() {
	register("ps", "list backends of a running Berth", false, runPs)
}

func runPs(ctx context.Context, args []string, stdio Stdio) error {
	var o clientOptions
	fs := newFlags("ps", stdio)
	usageLine(fs, "berth ps [--key KEY] [--state STATE] [--all] [--json]")
	o.flags(fs)
	key := fs.String("key", "", "only the backends of this `key`")
	state := fs.String("state", "", "only backends in this `state` (scheduled, starting, ready, terminating, terminated)")
	all := fs.Bool("all", false, "include terminated backends")
	asJSON := fs.Bool("json", false, "print JSON")
	rest, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usagef("unexpected argument %q; to select a key use: berth ps --key KEY", rest[0])
	}
	if *state != "" && !berth.State(*state).Valid() {
		return usagef("--state %q is not a state; use scheduled, starting, ready, terminating or terminated", *state)
	}

	c := o.client()
	var list []*berth.Backend
	if *all || *state != "" {
		list, err = c.Backends(ctx, *key, berth.State(*state))
	} else {
		list, err = c.LiveBackends(ctx, *key)
	}
	if err != nil {
		return o.explain(err)
	}

	if *asJSON {
		if list == nil {
			list = []*berth.Backend{}
		}
		return printJSON(stdio.Out, api.BackendList{Backends: list})
	}
	if len(list) == 0 {
		switch {
		case *all || *state != "":
			fmt.Fprintln(stdio.Out, "No backends.")
		default:
			fmt.Fprintln(stdio.Out, "No live backends. (berth ps --all includes terminated ones.)")
		}
		return nil
	}
	tw := tabwriter.NewWriter(stdio.Out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tKEY\tSTATE\tREASON\tAGE\tRUNTIME")
	now := time.Now()
	for _, b := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n",
			b.ID, dash(b.Key), b.State, dash(reasonText(b.Reason, b.ExitCode)), since(now.Sub(b.CreatedAt)), dash(b.Runtime))
	}
	return tw.Flush()
}

// reasonText is a termination reason with its exit code, e.g. "crashed (exit 1)".
func reasonText(r berth.Reason, exitCode *int) string {
	if exitCode == nil {
		return string(r)
	}
	if r == "" {
		return fmt.Sprintf("exit %d", *exitCode)
	}
	return fmt.Sprintf("%s (exit %d)", r, *exitCode)
}
