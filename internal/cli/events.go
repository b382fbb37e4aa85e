package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/berthhq/berth/api"
)

func init() {
	register("events", "print a backend's state changes as they happen", false, runEvents)
}

func runEvents(ctx context.Context, args []string, stdio Stdio) error {
	var o clientOptions
	fs := newFlags("events", "berth events [--output text|json] ID", stdio)
	o.flags(fs)
	asJSON := fs.output()
	rest, err := fs.parse(args)
	if err != nil {
		return err
	}
	id, err := oneID(rest, "berth events ID")
	if err != nil {
		return err
	}
	err = o.client().Events(ctx, id, func(e api.StateEvent) error {
		if *asJSON {
			// One object a line, so a pipe sees each change as it happens.
			return json.NewEncoder(stdio.Out).Encode(e)
		}
		printEvent(stdio.Out, e)
		return nil
	})
	if ctx.Err() != nil {
		return nil // Ctrl-C is how one stops watching a live backend
	}
	return o.explain(err, "berth ps --all lists the backends")
}

// eventTime is how events show their time: local, to the millisecond.
const eventTime = "2006-01-02 15:04:05.000"

// printEvent writes one line: time, state, then reason, exit code and message
// when there are any.
func printEvent(w io.Writer, e api.StateEvent) {
	at := e.At
	if t, err := time.Parse(time.RFC3339Nano, e.At); err == nil {
		at = t.Local().Format(eventTime)
	}
	line := fmt.Sprintf("%s  %-11s", at, e.State)
	if r := reasonText(e.Reason, e.ExitCode); r != "" {
		line += "  " + r
	}
	if e.Message != "" {
		line += "  " + e.Message
	}
	fmt.Fprintln(w, strings.TrimRight(line, " "))
}
