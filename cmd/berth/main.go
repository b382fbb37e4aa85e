// Command berth runs session-lived application backends. See README.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/berthhq/berth/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Run(ctx, os.Args[1:], cli.Stdio{In: os.Stdin, Out: os.Stdout, Err: os.Stderr})
	stop()
	os.Exit(code)
}
