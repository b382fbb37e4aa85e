package cli

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
)

func init() {
	register("pool", "list, create or replace, and remove warm pools", false, runPool)
}

const poolUsage = "berth pool ls [--output text|json] | berth pool put NAME --min-ready N [--max M] [spawn flags] -- CMD ARGS… | berth pool rm NAME"

func runPool(ctx context.Context, args []string, stdio Stdio) error {
	var o clientOptions
	fs := newFlags("pool", poolUsage, stdio)
	o.flags(fs)
	var (
		env                     envVars
		maxIdle, grace, startup secondsFlag
	)
	minReady := fs.Int("min-ready", 0, "put: how many unclaimed backends each node keeps ready")
	max := fs.Int("max", 0, "put: most live backends of the pool on a node, claimed or not (0: no cap)")
	image := fs.String("image", "", "put: container `image` to run (docker runtime); a command after -- overrides its own")
	fs.Var(&env, "env", "put: `K=V` in the backends' environment (repeatable)")
	fs.Var(&maxIdle, "max-idle", "put: once claimed, stop after this `duration` with no connection (default 5m)")
	fs.Var(&grace, "grace", "put: how long a stop waits after the stop signal before killing, as a `duration` (default 10s)")
	fs.Var(&startup, "startup-timeout", "put: how long a backend may take to accept HTTP on $PORT, as a `duration` (default 60s)")
	stateMode := fs.String("state-mode", "", "put: none or blob (loaded when a connect claims the backend)")
	asJSON := fs.output()

	flagArgs, command := args, []string(nil)
	if i := slices.Index(args, "--"); i >= 0 {
		flagArgs, command = args[:i], args[i+1:]
	}
	rest, err := fs.parse(flagArgs)
	if err != nil {
		return commandWithoutDashes(err, rest, flagArgs, command)
	}
	if len(rest) == 0 {
		return usagef("say what to do: %s", poolUsage)
	}
	c := o.client()
	switch verb := rest[0]; verb {
	case "ls", "list":
		if len(rest) > 1 {
			return usagef("unexpected argument %q: %s", rest[1], poolUsage)
		}
		ps, err := c.Pools(ctx)
		if err != nil {
			return o.explain(err)
		}
		if *asJSON {
			return printJSON(stdio.Out, api.PoolList{Pools: ps})
		}
		return printPools(stdio, ps)
	case "put":
		if len(rest) != 2 {
			return usagef("name one pool: berth pool put NAME --min-ready N -- CMD ARGS…")
		}
		if *image == "" && len(command) == 0 {
			return usagef("give the pool's backend: its command after -- or --image: %s", poolUsage)
		}
		spawn := &berth.SpawnConfig{
			Image: *image, Command: command, Env: env,
			MaxIdleSeconds: maxIdle.ptr(), GraceSeconds: grace.ptr(), StartupTimeoutSeconds: startup.n,
			State: berth.StateConfig{Mode: berth.StateMode(*stateMode)},
		}
		p, err := c.PutPool(ctx, rest[1], api.PoolRequest{Spawn: spawn, MinReady: *minReady, Max: *max})
		if err != nil {
			return o.explain(err)
		}
		if *asJSON {
			return printJSON(stdio.Out, p)
		}
		fmt.Fprintf(stdio.Out, "Pool %s keeps %d ready (now %d ready, %d starting, %d claimed).\n", p.Name, p.MinReady, p.Ready, p.Starting, p.Claimed)
		return nil
	case "rm", "delete":
		if len(rest) != 2 {
			return usagef("name one pool: berth pool rm NAME (berth pool ls lists them)")
		}
		if err := c.DeletePool(ctx, rest[1]); err != nil {
			return o.explain(err)
		}
		fmt.Fprintf(stdio.Out, "Removed pool %s: its unclaimed backends stop; claimed ones run on.\n", rest[1])
		return nil
	default:
		return usagef("unknown pool command %q: %s", verb, poolUsage)
	}
}

func printPools(stdio Stdio, ps []api.Pool) error {
	if len(ps) == 0 {
		fmt.Fprintln(stdio.Out, "No pools (berth pool put NAME --min-ready N -- CMD ARGS… makes one).")
		return nil
	}
	tw := tabwriter.NewWriter(stdio.Out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "POOL\tMIN READY\tMAX\tREADY\tSTARTING\tCLAIMED\tBACKEND")
	for _, p := range ps {
		max := "-"
		if p.Max > 0 {
			max = fmt.Sprint(p.Max)
		}
		what := p.Spawn.Image
		if len(p.Spawn.Command) > 0 {
			what = strings.TrimSpace(what + " " + strings.Join(p.Spawn.Command, " "))
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%d\t%d\t%s\n", p.Name, p.MinReady, max, p.Ready, p.Starting, p.Claimed, what)
	}
	return tw.Flush()
}
