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
	"regexp"
	"sort"
	"strings"
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
type usageError struct {
	msg     string
	unknown string // a flag the command does not define, e.g. "-m"
}

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{msg: fmt.Sprintf(format, args...)} }

// Run runs the berth command line and returns the process exit code.
func Run(ctx context.Context, args []string, stdio Stdio) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		printUsage(stdio.Out)
		return 0
	}
	if args[0] == "--version" {
		args[0] = "version"
	}
	cmd, ok := commands[args[0]]
	if !ok {
		msg := fmt.Sprintf("berth: unknown command %q", args[0])
		if s := closest(args[0], visibleCommands()); s != "" {
			msg += fmt.Sprintf("; did you mean %s?", s)
		}
		fmt.Fprintln(stdio.Err, msg+" (berth help lists the commands)")
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

func visibleCommands() []string {
	var names []string
	for n, c := range commands {
		if !c.hidden {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return names
}

func printUsage(w io.Writer) {
	fmt.Fprintln(w, "berth runs session-lived application backends.\n\nUsage: berth <command> [flags]\n\nCommands:")
	for _, n := range visibleCommands() {
		fmt.Fprintf(w, "  %-11s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "\nRun 'berth <command> -h' for a command's flags.")
}

// flags is a command's flag set. It never prints while parsing: -h prints
// the usage to standard output, and a bad flag becomes one usage error that
// Run prints once.
type flags struct {
	*flag.FlagSet
	name  string // the command, as typed after berth: "ps", "state ls"
	usage string // how to call it, shown above the flags by -h
	out   io.Writer
}

func newFlags(name, usage string, stdio Stdio) *flags {
	fs := flag.NewFlagSet("berth "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return &flags{FlagSet: fs, name: name, usage: usage, out: stdio.Out}
}

// printUsage writes how to call the command, then its flags, written as
// errors write them (--name, -f).
func (f *flags) printUsage() {
	fmt.Fprintf(f.out, "Usage: %s\n", f.usage)
	first := true
	f.VisitAll(func(fl *flag.Flag) {
		if first {
			fmt.Fprintln(f.out, "\nFlags:")
			first = false
		}
		arg, help := flag.UnquoteUsage(fl)
		if def := fl.DefValue; def != "" && def != "false" && def != "0" && def != "[]" {
			help += " (default " + def + ")"
		}
		fmt.Fprintf(f.out, "  %s\n      %s\n", strings.TrimSpace(flagName(fl.Name)+" "+arg), help)
	})
	if c, ok := f.out.(*flagCollector); ok {
		c.add(f)
	}
}

// parse parses flags found anywhere among args, so both `berth logs -f ID`
// and `berth logs ID -f` work, and returns the other arguments in order.
// Everything after "--" is an argument. On an error it also returns the
// arguments it had collected before it.
func (f *flags) parse(args []string) ([]string, error) {
	var rest []string
	for {
		if err := f.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				f.printUsage()
				return rest, err
			}
			return rest, f.explain(err)
		}
		left := f.Args()
		if len(left) == 0 {
			return rest, nil
		}
		if n := len(args) - len(left); n > 0 && args[n-1] == "--" {
			return append(rest, left...), nil
		}
		rest = append(rest, left[0])
		args = left[1:]
	}
}

var (
	undefinedRE = regexp.MustCompile(`^flag provided but not defined: -(.*)$`)
	needsArgRE  = regexp.MustCompile(`^flag needs an argument: -(.*)$`)
	badValueRE  = regexp.MustCompile(`^invalid (?:boolean )?value (".*") for (?:flag )?-([^:]+): (.*)$`)
)

// explain turns the flag package's errors into one line that says what to
// do, naming flags the way the help does (--name, -f).
func (f *flags) explain(err error) error {
	msg := err.Error()
	if m := undefinedRE.FindStringSubmatch(msg); m != nil {
		name, _, _ := strings.Cut(m[1], "=")
		e := &usageError{unknown: flagName(name)}
		e.msg = fmt.Sprintf("unknown flag %s", flagName(name))
		var names []string
		f.VisitAll(func(fl *flag.Flag) { names = append(names, fl.Name) })
		if s := closest(name, names); s != "" {
			e.msg += fmt.Sprintf("; did you mean %s?", flagName(s))
		} else {
			e.msg += fmt.Sprintf(" (berth %s -h lists the flags)", f.name)
		}
		return e
	}
	if m := needsArgRE.FindStringSubmatch(msg); m != nil {
		return usagef("%s needs a value (berth %s -h)", flagName(m[1]), f.name)
	}
	if m := badValueRE.FindStringSubmatch(msg); m != nil {
		return usagef("%s %s: %s", flagName(m[2]), m[1], m[3])
	}
	return usagef("%s (berth %s -h lists the flags)", msg, f.name)
}

// flagName is how help and errors write a flag: -f, --name.
func flagName(name string) string {
	name = strings.TrimLeft(name, "-")
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

// closest returns the candidate nearest to s by edit distance, if one is
// near enough to be what was meant, else "".
func closest(s string, candidates []string) string {
	s = strings.TrimLeft(s, "-")
	best, bestD := "", 0
	for _, c := range candidates {
		d := editDistance(s, c)
		if len(s) > 1 && len(c) > len(s) && strings.HasPrefix(c, s) {
			d = min(d, 1) // an abbreviation
		}
		if best == "" || d < bestD {
			best, bestD = c, d
		}
	}
	if best == "" || bestD >= len(s) || bestD > max(1, len(s)/3) {
		return ""
	}
	return best
}

// editDistance is the Damerau (optimal string alignment) distance, so a
// swap of two neighbours counts as one typo.
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	d := make([][]int, len(ra)+1)
	for i := range d {
		d[i] = make([]int, len(rb)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(ra); i++ {
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(ra)][len(rb)]
}

// output adds --output (text or json) and its shorthand --json, and
// returns whether JSON was asked for.
func (f *flags) output() *bool {
	asJSON := new(bool)
	f.BoolVar(asJSON, "json", false, "print JSON (same as --output json)")
	f.Func("output", "output `format`: text or json", func(s string) error {
		switch s {
		case "json":
			*asJSON = true
		case "text":
			*asJSON = false
		default:
			return errors.New("use text or json")
		}
		return nil
	})
	return asJSON
}

// envOr returns the BERTH_* environment value for a flag default.
func envOr(name, def string) string {
	if v, ok := os.LookupEnv(name); ok && v != "" {
		return v
	}
	return def
}
