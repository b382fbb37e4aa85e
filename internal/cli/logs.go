package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
)

func init() {
	register("logs", "print a backend's output", false, runLogs)
}

func runLogs(ctx context.Context, args []string, stdio Stdio) error {
	var o clientOptions
	const usage = "berth logs [-f] [--output text|json] ID"
	fs := newFlags("logs", usage, stdio)
	o.flags(fs)
	follow := fs.Bool("f", false, "follow: keep printing new output until the backend ends")
	asJSON := fs.output()
	rest, err := fs.parse(args)
	if err != nil {
		return err
	}
	id, err := oneID(rest, usage)
	if err != nil {
		return err
	}
	out := stdio.Out
	var lines *jsonLines
	if *asJSON {
		lines = &jsonLines{enc: json.NewEncoder(stdio.Out), id: id}
		out = lines
	}
	err = o.client().Logs(ctx, id, *follow, out)
	if lines != nil {
		lines.flush()
	}
	if ctx.Err() != nil {
		return nil // Ctrl-C is how one stops following
	}
	return o.explain(err, "berth ps --all lists the backends")
}

// jsonLines turns a backend's output into one JSON object per line,
// {"backend_id": ..., "line": ...} without the newline, as it arrives:
// a line is written once its newline has come (or at the end).
type jsonLines struct {
	enc     *json.Encoder
	id      string
	partial []byte
}

type logLine struct {
	BackendID string `json:"backend_id"`
	Line      string `json:"line"`
}

func (l *jsonLines) Write(p []byte) (int, error) {
	n := len(p)
	for {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			l.partial = append(l.partial, p...)
			return n, nil
		}
		line := p[:i]
		if len(l.partial) > 0 {
			line = append(l.partial, line...)
			l.partial = l.partial[:0]
		}
		if err := l.enc.Encode(logLine{l.id, string(bytes.TrimSuffix(line, []byte("\r")))}); err != nil {
			return 0, err
		}
		p = p[i+1:]
	}
}

// flush writes a last line that had no newline.
func (l *jsonLines) flush() {
	if len(l.partial) > 0 {
		l.enc.Encode(logLine{l.id, string(l.partial)})
		l.partial = nil
	}
}

var _ io.Writer = (*jsonLines)(nil)
