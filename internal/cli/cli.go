// Package cli implements the berth command: one file per subcommand. Client
// verbs talk to a running server only through the api package's client.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
)

// Stdio is where a command reads and writes.
type Stdio struct {
	In       io.Reader
	Out, Err io.Writer
}

type command struct {
	summary string
	hidden  bool
	run     func(ctx context.Context, args []string, io Stdio) error
}

// commands is filled by each subcommand's file.
var commands = map[string]command{}

func register(name, summary string, hidden bool, run func(context.Context, []string, Stdio) error) {
	commands[name] = command{summary: summary, hidden: hidden, run: run}
}

// usageError makes Run print the message and exit 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

// Run runs the berth command line and returns the process exit code.
func Run(ctx context.Context, args []string, stdio Stdio) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		printUsage(stdio.Out)
		return 0
	}
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stdio.Err, "berth: unknown command %q\n\n", args[0])
		printUsage(stdio.Err)
		return 2
	}
	err := cmd.run(ctx, args[1:], stdio)
	var ue *usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stdio.Err, "berth %s: %s\n", args[0], ue.msg)
		return 2
	default:
		fmt.Fprintf(stdio.Err, "berth %s: %s\n", args[0], err)
		return 1
	}
}

func printUsage(w io.Writer) {
	fmt.Fprintln(w, "berth runs session-lived application backends.\n\nUsage: berth <command> [flags]\n\nCommands:")
	names := make([]string, 0, len(commands))
	for n, c := range commands {
		if !c.hidden {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "\nRun 'berth <command> -h' for a command's flags.")
}

// newFlags makes a FlagSet that reports errors instead of exiting.
func newFlags(name string, stdio Stdio) *flag.FlagSet {
	fs := flag.NewFlagSet("berth "+name, flag.ContinueOnError)
	fs.SetOutput(stdio.Err)
	return fs
}

// envOr returns the BERTH_* environment value for a flag default.
func envOr(name, def string) string {
	if v, ok := os.LookupEnv(name); ok && v != "" {
		return v
	}
	return def
}
