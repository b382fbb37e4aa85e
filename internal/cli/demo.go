package cli

import (
	"context"
	"log/slog"

	"github.com/berthhq/berth/examples/notepad"
)

func init() {
	register("demo-backend", "the demo notepad backend (run by berth dev)", true, runDemoBackend)
}

func runDemoBackend(ctx context.Context, args []string, stdio Stdio) error {
	if len(args) > 0 {
		return usagef("takes no arguments; it listens on $PORT")
	}
	log := slog.New(slog.NewTextHandler(stdio.Err, nil))
	return notepad.Run(ctx, notepad.Config{Logger: log})
}
