package cli

import (
	"context"
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/berthhq/berth/api"
)

func init() {
	register("state", "list, fetch or restore a key's saved states", false, runState)
}

const stateUsage = `berth state ls [--output text|json] KEY
       berth state get KEY [--version V] [-o FILE]
       berth state restore KEY --version V`

func runState(ctx context.Context, args []string, stdio Stdio) error {
	if len(args) == 0 {
		return usagef("which verb? usage: %s", stateUsage)
	}
	verb, args := args[0], args[1:]
	switch verb {
	case "ls", "get", "restore":
	case "-h", "--help", "help":
		fmt.Fprintf(stdio.Out, "Usage: %s\n\nRun 'berth state ls -h' for the flags.\n", stateUsage)
		return nil
	default:
		if s := closest(verb, []string{"ls", "get", "restore"}); s != "" {
			return usagef("unknown verb %q; did you mean %s?", verb, s)
		}
		return usagef("unknown verb %q; usage: %s", verb, stateUsage)
	}
	var o clientOptions
	fs := newFlags("state "+verb, stateUsage, stdio)
	o.flags(fs)
	version := fs.String("version", "", "a version from `berth state ls` (default: the current state)")
	out := fs.String("o", "", "write the state to this `file` instead of standard output")
	asJSON := fs.output()
	rest, err := fs.parse(args)
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
			if vs == nil {
				vs = []api.StateVersion{}
			}
			return printJSON(stdio.Out, api.StateVersionList{Key: key, Versions: vs})
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
			fmt.Fprintf(tw, "%s\t%d\t%d\t%s ago\t%s\n", v.Version, v.Size, v.Fence, since(now().Sub(v.SavedAt)), cur)
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
		return o.explain(c.StateData(ctx, key, *version, w), "berth state ls "+key+" lists its saved versions")
	}
	// The verb is restore.
	if *version == "" {
		return usagef("--version is required; list versions with: berth state ls %s", key)
	}
	v, err := c.StateRestore(ctx, key, *version)
	if err != nil {
		return o.explain(err, "berth state ls "+key+" lists its saved versions")
	}
	fmt.Fprintf(stdio.Out, "Restored %s to %s; it is now the current state as version %s.\n", key, *version, v.Version)
	return nil
}
