package cli

import (
	"context"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
)

func init() {
	register("dev", "run Berth locally: API, proxy and a demo backend in one process", false, runDev)
}

func runDev(ctx context.Context, args []string, stdio Stdio) error {
	o := serverOptions{dev: true}
	fs := newFlags("dev", "berth dev [flags]", stdio)
	o.flags(fs.FlagSet)
	noDemo := fs.Bool("no-demo", false, "do not start the demo notepad backend")
	rest, err := fs.parse(args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usagef("unexpected argument %q; berth dev takes only flags (berth dev -h)", rest[0])
	}
	// berth dev removes its Docker network when it stops; a network of its
	// own keeps that from pulling the network from under a berth serve on
	// the same engine, which leaves `berth` in place.
	named := os.Getenv("BERTH_DOCKER_NETWORK") != ""
	fs.Visit(func(f *flag.Flag) { named = named || f.Name == "docker-network" })
	if !named {
		o.DockerNetwork = devNetwork
	}
	return serve(ctx, &o, stdio, func(s *runningServer) {
		printBanner(ctx, s, stdio, !*noDemo)
	})
}

// devNetwork is berth dev's Docker network unless one is named.
const devNetwork = "berth-dev"

// demoSpawn runs this very binary's hidden demo-backend subcommand, so the
// first run needs nothing but berth itself.
func demoSpawn() (*berth.SpawnConfig, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	return &berth.SpawnConfig{
		Command: []string{exe, "demo-backend"},
		State:   berth.StateConfig{Mode: berth.StateModeBlob, SaveIntervalSeconds: 5},
	}, nil
}

func printBanner(ctx context.Context, s *runningServer, stdio Stdio, demo bool) {
	w := stdio.Out
	fmt.Fprintf(w, "\nBerth dev is running (runtimes: %s).\n", strings.Join(s.runtime, ", "))
	fmt.Fprintf(w, "  control API  %s   (no API key in dev)\n", s.apiURL)
	fmt.Fprintf(w, "  proxy        %s\n", s.public)
	if demo {
		spawn, err := demoSpawn()
		if err == nil {
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			_, err = s.manager.Connect(cctx, &api.ConnectRequest{Key: "demo", Spawn: spawn, Wait: true})
			cancel()
		}
		if err != nil {
			fmt.Fprintf(w, "\n  (the demo backend did not start: %v)\n", err)
		} else {
			fmt.Fprintf(w, "\nOpen the demo notepad in two browser tabs and type in one:\n  %s/demo\n", s.apiURL)
			fmt.Fprintln(w, "  (each visit connects to the backend for key \"demo\", starting it again if it went idle)")
		}
	}
	fmt.Fprintf(w, `
Spawn your own backend (any program that serves HTTP on $PORT):
  curl -s -X POST %s/v1/connect \
    -d '{"key":"doc-42","spawn":{"command":["python3","-m","http.server","${PORT}"]},"wait":true}'
  or: berth connect --wait doc-42 -- python3 -m http.server '${PORT}'
Then open the "url" it returns. List backends with: berth ps
%s
Press Ctrl-C to stop Berth and its backends.
`, s.apiURL, containerHint(s.runtime))
}

// containerHint tells how to try a container backend when Docker is there:
// an image this binary makes, since nothing may be pullable.
func containerHint(runtimes []string) string {
	if !slices.Contains(runtimes, "docker") {
		return ""
	}
	return "Containers: berth demo-image builds an image to spawn with \"image\" (see README.md).\n"
}
