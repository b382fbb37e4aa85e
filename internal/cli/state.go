package cli

import (
	"context"
	"fmt"
	"os"
	"text/tabwriter"
	"time"
)

func init() {
	register("state", "list, fetch or restore a key's saved states", false, runState)
}

const stateUsage = `berth state ls KEY
       berth state get KEY [--version V] [-o FILE]
       berth state restore KEY --version V`

func runState(ctx context.Context, args []string, stdio Stdio) error {
	if len(args) == 0 {
		return usagef("usage: %s", stateUsage)
	}
	verb, args := args[0], args[1:]
	var o clientOptions
	fs := newFlags("state "+verb, stdio)
	usageLine(fs, stateUsage)
	o.flags(fs)
	version := fs.String("version", "", "a version from `berth state ls` (default: the current state)")
	out := fs.String("o", "", "write the state to this file instead of standard output")
	asJSON := fs.Bool("json", false, "print JSON")
	rest, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(rest) != 1 {
		return usagef("which key? usage: %s", stateUsage)
	}
	key := rest[0]
	c := o.client()
	switch verb {
	case "ls":
		vs, err := c.StateVersions(ctx, key)
		if err != nil {
			return o.explain(err)
		}
		if *asJSON {
			return printJSON(stdio.Out, vs)
		}
		if len(vs) == 0 {
			fmt.Fprintf(stdio.Out, "No saved state for %s.\n", key)
			return nil
		}
		tw := tabwriter.NewWriter(stdio.Out, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "VERSION\tSIZE\tFENCE\tSAVED\t")
		for i, v := range vs {
			cur := ""
			if i == 0 {
				cur = "(current)"
			}
			fmt.Fprintf(tw, "%s\t%d\t%d\t%s ago\t%s\n", v.Version, v.Size, v.Fence, since(time.Since(v.SavedAt)), cur)
		}
		return tw.Flush()
	case "get":
		w := stdio.Out
		if *out != "" {
			f, err := os.Create(*out)
			if err != nil {
				return err
			}
			defer f.Close()
			w = f
		}
		return o.explain(c.StateData(ctx, key, *version, w))
	case "restore":
		if *version == "" {
			return usagef("--version is required; list versions with: berth state ls %s", key)
		}
		v, err := c.StateRestore(ctx, key, *version)
		if err != nil {
			return o.explain(err)
		}
		fmt.Fprintf(stdio.Out, "Restored %s to %s; it is now the current state as version %s.\n", key, *version, v.Version)
		return nil
	}
	return usagef("unknown verb %q; usage: %s", verb, stateUsage)
}
