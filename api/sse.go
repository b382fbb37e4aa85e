package api

import (
	"bufio"
	"io"
	"strings"
)

// maxSSELine bounds one line of an event stream, so a broken server cannot
// make the client buffer without limit. State events are far smaller.
const maxSSELine = 1 << 20

// sseEvent is one dispatched Server-Sent Event.
type sseEvent struct {
	Type string // "message" when the stream named none
	Data string
	ID   string
}

// sseReader reads Server-Sent Events as the WHATWG spec describes: fields
// until a blank line, comments (":…") ignored, several data lines joined by
// "\n". It reads whole lines, so events split across network chunks arrive
// intact.
type sseReader struct {
	sc *bufio.Scanner
}

func newSSEReader(r io.Reader) *sseReader {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxSSELine)
	return &sseReader{sc: sc}
}

// Next returns the next event. At the end of the stream it returns io.EOF;
// an event not closed by a blank line is discarded, as the spec says.
func (r *sseReader) Next() (sseEvent, error) {
	var (
		ev      sseEvent
		data    strings.Builder
		hasData bool
	)
	for r.sc.Scan() {
		line := r.sc.Text()
		if line == "" {
			if !hasData { // keepalive blank lines, or an event with no data
				ev = sseEvent{}
				continue
			}
			if ev.Type == "" {
				ev.Type = "message"
			}
			ev.Data = data.String()
			return ev, nil
		}
		if line[0] == ':' {
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "event":
			ev.Type = value
		case "data":
			if hasData {
				data.WriteByte('\n')
			}
			data.WriteString(value)
			hasData = true
		case "id":
			ev.ID = value
		}
	}
	if err := r.sc.Err(); err != nil {
		return sseEvent{}, err
	}
	return sseEvent{}, io.EOF
}
