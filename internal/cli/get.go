package cli

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/berthhq/berth"
)

func init() {
	register("get", "show one backend: state, times, spawn config", false, runGet)
	register("inspect", "same as get", true, runGet)
}

const getUsage = "berth get [--output text|json] ID"

func runGet(ctx context.Context, args []string, stdio Stdio) error {
	var o clientOptions
	fs := newFlags("get", getUsage, stdio)
	o.flags(fs)
	asJSON := fs.output()
	rest, err := fs.parse(args)
	if err != nil {
		return err
	}
	id, err := oneID(rest, getUsage)
	if err != nil {
		return err
	}
	b, err := o.client().Backend(ctx, id)
	if err != nil {
		return o.explain(err, "berth ps --all lists the backends")
	}
	if *asJSON {
		return printJSON(stdio.Out, b)
	}
	writeBackend(stdio, b, now())
	return nil
}

// writeBackend prints one backend as aligned "field  value" lines; times
// show their age too. Environment values are not shown, only names: they
// may hold secrets (--output json has what the API returns).
func writeBackend(stdio Stdio, b *berth.Backend, now time.Time) {
	tw := tabwriter.NewWriter(stdio.Out, 0, 0, 2, ' ', 0)
	row := func(name, value string) { fmt.Fprintf(tw, "%s\t%s\n", name, dash(value)) }
	at := func(t *time.Time) string {
		if t == nil {
			return ""
		}
		return fmt.Sprintf("%s (%s ago)", t.Local().Format(time.DateTime), since(now.Sub(*t)))
	}
	row("ID", b.ID)
	row("Key", b.Key)
	row("User", b.User)
	row("State", string(b.State))
	row("Reason", reasonText(b.Reason, b.ExitCode))
	row("Runtime", b.Runtime)
	row("Node", b.Node)
	row("Fencing token", fmt.Sprint(b.FencingToken))
	row("Created", at(&b.CreatedAt))
	row("Ready", at(b.ReadyAt))
	row("Last active", at(b.LastActiveAt))
	row("Terminated", at(b.TerminatedAt))
	s := b.Spawn
	row("Image", s.Image)
	row("Command", shellJoin(s.Command))
	env := make([]string, 0, len(s.Env))
	for k := range s.Env {
		env = append(env, k)
	}
	slices.Sort(env)
	row("Env", strings.Join(env, " "))
	row("Max idle", orNever(optSeconds(s.MaxIdleSeconds, berth.DefaultMaxIdle)))
	row("Lifetime", orNever(time.Duration(s.LifetimeSeconds)*time.Second))
	row("Grace", optSeconds(s.GraceSeconds, berth.DefaultGrace).String())
	startup := berth.DefaultStartupTimeout
	if s.StartupTimeoutSeconds > 0 {
		startup = time.Duration(s.StartupTimeoutSeconds) * time.Second
	}
	row("Startup timeout", startup.String())
	mode := string(s.State.Mode)
	if mode == "" {
		mode = string(berth.StateModeNone)
	}
	row("State mode", mode)
	tw.Flush()
}

// optSeconds is an optional *_seconds field as a duration, def if unset.
func optSeconds(n *int, def time.Duration) time.Duration {
	if n == nil {
		return def
	}
	return time.Duration(*n) * time.Second
}

// orNever shows a limit of 0 as "never".
func orNever(d time.Duration) string {
	if d == 0 {
		return "never"
	}
	return d.String()
}

// shellJoin writes a command line so it can be pasted into a shell.
func shellJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = shellQuote(a)
	}
	return strings.Join(q, " ")
}

func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:=@,+%") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
