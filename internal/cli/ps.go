package cli

import (
	"context"
	"fmt"
	"strings"
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
	fs := newFlags("ps", "berth ps [--key KEY] [--state STATE] [--all] [-q] [--output text|json]", stdio)
	o.flags(fs)
	key := fs.String("key", "", "only the backends of this `key`")
	state := fs.String("state", "", "only backends in this `state` (scheduled, starting, ready, terminating, terminated)")
	all := fs.Bool("all", false, "include terminated backends")
	quiet := fs.Bool("q", false, "print only the backend ids")
	asJSON := fs.output()
	rest, err := fs.parse(args)
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

	switch {
	case *asJSON:
		if list == nil {
			list = []*berth.Backend{}
		}
		return printJSON(stdio.Out, api.BackendList{Backends: list})
	case *quiet:
		for _, b := range list {
			fmt.Fprintln(stdio.Out, b.ID)
		}
		return nil
	case len(list) == 0 && (*all || *state != ""):
		fmt.Fprintln(stdio.Out, "No backends.")
		return nil
	case len(list) == 0:
		fmt.Fprintln(stdio.Out, "No live backends. (berth ps --all includes terminated ones.)")
		return nil
	}
	writePs(stdio, list, now())
	return nil
}

// writePs prints backends as an aligned table. AGE counts from the spawn,
// ACTIVE from the last request or connection through the proxy, which is
// what max_idle_seconds is measured against.
func writePs(stdio Stdio, list []*berth.Backend, at time.Time) {
	tw := tabwriter.NewWriter(stdio.Out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tKEY\tSTATE\tREASON\tAGE\tACTIVE\tRUNTIME\tRUNS")
	for _, b := range list {
		active := "-"
		if b.LastActiveAt != nil {
			active = since(at.Sub(*b.LastActiveAt)) + " ago"
		}
		state := string(b.State)
		if b.FrozenAt != nil { // ready, and frozen (idle_action freeze)
			state = "frozen"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			b.ID, dash(b.Key), state, dash(reasonText(b.Reason, b.ExitCode)), since(at.Sub(b.CreatedAt)),
			active, dash(b.Runtime), dash(runs(b.Spawn)))
	}
	tw.Flush()
}

// runs is what a backend runs, shortened to fit a table cell.
func runs(s berth.SpawnConfig) string {
	r := strings.Join(s.Command, " ")
	if s.Image != "" {
		r = strings.TrimSpace(s.Image + " " + r)
	}
	if n := []rune(r); len(n) > 40 {
		r = strings.TrimRight(string(n[:39]), " ") + "…"
	}
	return r
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
