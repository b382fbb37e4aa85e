package cli

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/berthhq/berth/state"
)

func init() {
	register("state-sync", "keep a mode-dir directory through the backend API (the kubernetes runtime's init container and sidecar)", true, runStateSync)
}

const stateSyncUsage = `berth state-sync restore|run
  Reads BERTH_STATE_URL, BERTH_SECRET, BERTH_STATE_DIR and BERTH_SAVE_INTERVAL (seconds).
  restore: fill the directory with the key's saved state, then exit.
  run: save it every interval when it changed, and once more on SIGTERM.`

// stateSyncFinal bounds the final save; the kubelet's grace period bounds
// it too.
const stateSyncFinal = 30 * time.Second

func runStateSync(ctx context.Context, args []string, stdio Stdio) error {
	if len(args) != 1 || (args[0] != "restore" && args[0] != "run") {
		return usagef("usage: %s", stateSyncUsage)
	}
	d := &state.DirSync{
		URL:    os.Getenv("BERTH_STATE_URL"),
		Secret: os.Getenv("BERTH_SECRET"),
		Dir:    os.Getenv("BERTH_STATE_DIR"),
		Client: &http.Client{Timeout: 5 * time.Minute},
		Logger: slog.New(slog.NewTextHandler(stdio.Err, nil)),
	}
	if d.URL == "" || d.Secret == "" || d.Dir == "" {
		return usagef("state-sync: BERTH_STATE_URL, BERTH_SECRET and BERTH_STATE_DIR must be set")
	}
	secs, err := strconv.Atoi(os.Getenv("BERTH_SAVE_INTERVAL"))
	if err != nil || secs < 1 {
		secs = 30
	}
	d.Interval = time.Duration(secs) * time.Second
	if args[0] == "restore" {
		return d.Restore(ctx)
	}
	if err := d.Run(ctx, stateSyncFinal); err != nil {
		return err
	}
	fmt.Fprintln(stdio.Err, "state-sync: final save done")
	return nil
}
