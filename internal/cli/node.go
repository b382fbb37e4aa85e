package cli

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/berthhq/berth/api"
)

func init() {
	register("node", "list, drain or undrain the replicas sharing a store", false, runNode)
}

const nodeUsage = "berth node ls [--output text|json] | berth node drain NODE | berth node undrain NODE"

func runNode(ctx context.Context, args []string, stdio Stdio) error {
	var o clientOptions
	fs := newFlags("node", nodeUsage, stdio)
	o.flags(fs)
	asJSON := fs.output()
	rest, err := fs.parse(args)
	if err != nil {
		return err
	}
	if len(rest) == 0 {
		return usagef("say what to do: %s", nodeUsage)
	}
	c := o.client()
	switch verb := rest[0]; verb {
	case "ls", "list":
		if len(rest) > 1 {
			return usagef("unexpected argument %q: %s", rest[1], nodeUsage)
		}
		nodes, err := c.Nodes(ctx)
		if err != nil {
			return o.explain(err)
		}
		if *asJSON {
			return printJSON(stdio.Out, api.NodeList{Nodes: nodes})
		}
		return printNodes(stdio, nodes)
	case "drain", "undrain":
		if len(rest) != 2 {
			return usagef("name one node: berth node %s NODE (berth node ls lists them)", verb)
		}
		if err := c.Drain(ctx, rest[1], verb == "drain"); err != nil {
			return o.explain(err)
		}
		if verb == "drain" {
			fmt.Fprintf(stdio.Out, "Drained %s: no new backends go there; its running ones run until they stop.\n", rest[1])
		} else {
			fmt.Fprintf(stdio.Out, "Undrained %s: new backends may go there again.\n", rest[1])
		}
		return nil
	default:
		return usagef("unknown node command %q: %s", verb, nodeUsage)
	}
}

func printNodes(stdio Stdio, nodes []api.Node) error {
	if len(nodes) == 0 {
		fmt.Fprintln(stdio.Out, "No nodes: this Berth's store is not shared by replicas (berth serve --store postgres://…).")
		return nil
	}
	tw := tabwriter.NewWriter(stdio.Out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tSTATUS\tLIVE\tCAPACITY\tRUNTIMES\tPROXY\tUP")
	now := time.Now()
	for _, n := range nodes {
		status := "alive"
		switch {
		case !n.Alive:
			status = "lease expired"
		case n.Drained:
			status = "drained"
		}
		capacity := "-"
		if n.Capacity > 0 {
			capacity = fmt.Sprint(n.Capacity)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", n.ID, status, n.Live, capacity,
			dash(strings.Join(n.Runtimes, ",")), dash(n.ProxyAddr), since(now.Sub(n.StartedAt)))
	}
	return tw.Flush()
}
