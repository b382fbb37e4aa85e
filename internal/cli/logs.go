package cli

import "context"

func init() {
	register("logs", "print a backend's output", false, runLogs)
}

func runLogs(ctx context.Context, args []string, stdio Stdio) error {
	var o clientOptions
	fs := newFlags("logs", "berth logs [-f] ID", stdio)
	o.flags(fs)
	follow := fs.Bool("f", false, "follow: keep printing new output until the backend ends")
	rest, err := fs.parse(args)
	if err != nil {
		return err
	}
	id, err := oneID(rest, "berth logs [-f] ID")
	if err != nil {
		return err
	}
	err = o.client().Logs(ctx, id, *follow, stdio.Out)
	if ctx.Err() != nil {
		return nil // Ctrl-C is how one stops following
	}
	return o.explain(err, "berth ps --all lists the backends")
}
