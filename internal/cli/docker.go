package cli

import (
	"context"
	"errors"
	"log/slog"

	"github.com/berthhq/berth/runtime"
)

// openDocker connects the docker runtime when an engine answers.
func openDocker(ctx context.Context, o *serverOptions, log *slog.Logger) (runtime.Runtime, error) {
	return nil, errors.New("docker runtime is not wired yet")
}
