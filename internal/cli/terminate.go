package cli

import (
	"context"
	"fmt"
)

func init() {
	register("terminate", "stop a backend (its state is saved first)", false, runTerminate)
}

func runTerminate(ctx context.Context, args []string, stdio Stdio) error {
	var o clientOptions
	fs := newFlags("terminate", "berth terminate [--hard] ID", stdio)
	o.flags(fs)
	hard := fs.Bool("hard", false, "kill at once instead of sending the stop signal and waiting the grace period")
	rest, err := fs.parse(args)
	if err != nil {
		return err
	}
	id, err := oneID(rest, "berth terminate [--hard] ID")
	if err != nil {
		return err
	}
	if err := o.client().Terminate(ctx, id, *hard); err != nil {
		return o.explain(err, "berth ps lists the live backends")
	}
	fmt.Fprintf(stdio.Out, "Terminating %s. Follow it with: berth events %s\n", id, id)
	return nil
}
