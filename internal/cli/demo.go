package cli

import (
	"context"
	"errors"
	"log/slog"

	"github.com/berthhq/berth/examples/notepad"
	"github.com/berthhq/berth/sdk"
)

func init() {
	register("demo-backend", "the demo notepad backend (run by berth dev)", true, runDemoBackend)
}

// runDemoBackend serves the notepad; spawned with state mode blob it loads
// the document through the SDK and saves it when stopped, so it survives
// idle shutdowns.
func runDemoBackend(ctx context.Context, args []string, stdio Stdio) error {
	if len(args) > 0 {
		return usagef("takes no arguments; it listens on $PORT")
	}
	log := slog.New(slog.NewTextHandler(stdio.Err, nil))
	cfg := notepad.Config{Logger: log}
	if c, err := sdk.FromEnv(); err == nil {
		cfg.Load = func(ctx context.Context) ([]byte, error) {
			b, err := c.Load(ctx)
			if errors.Is(err, sdk.ErrNoState) {
				return nil, nil
			}
			return b, err
		}
		cfg.Save = c.Save
	}
	return notepad.Run(ctx, cfg)
}
