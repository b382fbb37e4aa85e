package chaos

import (
	"bufio"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// auditLine is one line testbackend appended to its TB_AUDIT_FILE:
// "tb-audit EVENT key=K backend=ID fence=N pid=P [name=value…]".
type auditLine struct {
	event   string // start, locked, VIOLATION, ready, stop, exit
	key     string
	backend string
	fence   int64
	pid     int
	attrs   map[string]string // the rest (holder, signal, code, late)
	raw     string
}

// parseAuditLine parses one line; ok is false for anything else (a line
// cut short by a crash in the middle of a write cannot happen: each line
// is one write, but the test does not rely on it).
func parseAuditLine(s string) (auditLine, bool) {
	f := splitQuoted(s)
	if len(f) < 2 || f[0] != "tb-audit" {
		return auditLine{}, false
	}
	l := auditLine{event: f[1], attrs: map[string]string{}, raw: s}
	for _, kv := range f[2:] {
		k, v, _ := strings.Cut(kv, "=")
		if uq, err := strconv.Unquote(v); err == nil {
			v = uq
		}
		switch k {
		case "key":
			l.key = v
		case "backend":
			l.backend = v
		case "fence":
			l.fence, _ = strconv.ParseInt(v, 10, 64)
		case "pid":
			l.pid, _ = strconv.Atoi(v)
		default:
			l.attrs[k] = v
		}
	}
	return l, l.backend != ""
}

// splitQuoted splits s at spaces outside double-quoted Go strings.
func splitQuoted(s string) []string {
	var out []string
	var cur strings.Builder
	inQuote, escaped := false, false
	for _, r := range s {
		switch {
		case escaped:
			escaped = false
		case inQuote && r == '\\':
			escaped = true
		case r == '"':
			inQuote = !inQuote
		case r == ' ' && !inQuote:
			if cur.Len() > 0 {
				out = append(out, cur.String())
				cur.Reset()
			}
			continue
		}
		cur.WriteRune(r)
	}
	if cur.Len() > 0 {
		out = append(out, cur.String())
	}
	return out
}

// readAudit reads every audit file named name under root (one shared file
// for the process runtime; one per key's volume for docker).
func readAudit(root, name string) ([]auditLine, error) {
	var lines []auditLine
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		if d.IsDir() || d.Name() != name {
			return nil
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			if l, ok := parseAuditLine(sc.Text()); ok {
				lines = append(lines, l)
			}
		}
		return sc.Err()
	})
	return lines, err
}

// auditLog is what the backends of one iteration wrote, by backend.
type auditLog struct {
	lines      []auditLine
	byBackend  map[string][]auditLine
	violations []auditLine
}

func newAuditLog(lines []auditLine) *auditLog {
	a := &auditLog{lines: lines, byBackend: map[string][]auditLine{}}
	for _, l := range lines {
		a.byBackend[l.backend] = append(a.byBackend[l.backend], l)
		if l.event == "VIOLATION" {
			a.violations = append(a.violations, l)
		}
	}
	return a
}

// has reports whether backend id wrote event.
func (a *auditLog) has(id, event string) bool {
	for _, l := range a.byBackend[id] {
		if l.event == event {
			return true
		}
	}
	return false
}

// fences returns, per key, every fencing token a started backend of it
// carried, by backend id.
func (a *auditLog) fences() map[string]map[string]int64 {
	out := map[string]map[string]int64{}
	for _, l := range a.lines {
		if l.event != "start" {
			continue
		}
		if out[l.key] == nil {
			out[l.key] = map[string]int64{}
		}
		out[l.key][l.backend] = l.fence
	}
	return out
}
