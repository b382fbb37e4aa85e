package bench

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Report is the outcome of one `berth bench`: one row per figure.
type Report struct {
	Date      time.Time `json:"date"`
	Machine   string    `json:"machine"`
	Command   string    `json:"command"`
	Revision  string    `json:"revision,omitempty"`
	Generator string    `json:"generator"`
	Runs      int       `json:"runs"`
	Quick     bool      `json:"quick"`
	Rows      []Row     `json:"rows"`
	Notes     []string  `json:"notes,omitempty"`
}

// Row is one figure: medians over the runs, and how they compare with the
// target.
type Row struct {
	Scenario string `json:"scenario"`
	Figure   string `json:"figure"`
	Unit     string `json:"unit"`
	// Berth and Baseline are the medians of the per-run values; Baseline
	// is nil for figures without one.
	Berth    *float64 `json:"berth,omitempty"`
	Baseline *float64 `json:"baseline,omitempty"`
	// BaselineName says what the baseline is ("exec", "nginx", "direct").
	BaselineName string `json:"baseline_name,omitempty"`
	// Compared is the median of the per-run values the target is about:
	// the ratio Berth/baseline, the difference Berth−baseline, or Berth.
	Compared *float64 `json:"compared,omitempty"`
	Target   string   `json:"target"`
	// Status is pass, miss, info, skipped or error.
	Status string `json:"status"`
	// Why explains a skip or an error.
	Why    string      `json:"why,omitempty"`
	Method string      `json:"method,omitempty"`
	Notes  []string    `json:"notes,omitempty"`
	PerRun []RunFigure `json:"per_run,omitempty"`
	goal   target
}

// RunFigure is one run's values of a figure.
type RunFigure struct {
	Berth    float64 `json:"berth"`
	Baseline float64 `json:"baseline,omitempty"`
}

// Status values.
const (
	StatusPass    = "pass"
	StatusMiss    = "miss"
	StatusInfo    = "info"
	StatusSkipped = "skipped"
	StatusError   = "error"
)

// Broken lists the scenarios that failed to run (not those that missed).
func (r *Report) Broken() []string {
	var out []string
	for _, row := range r.Rows {
		if row.Status == StatusError && !slices.Contains(out, row.Scenario) {
			out = append(out, row.Scenario)
		}
	}
	return out
}

// targetKind says how a figure is judged.
type targetKind int

const (
	noTarget targetKind = iota
	ratioAtMost
	ratioAtLeast
	deltaAtMost
	atLeast
	atMost
)

type target struct {
	kind  targetKind
	value float64
}

func (t target) String(unit string) string {
	switch t.kind {
	case ratioAtMost:
		return "≤ " + fmtRatio(t.value)
	case ratioAtLeast:
		return "≥ " + fmtRatio(t.value)
	case deltaAtMost:
		return "+≤ " + fmtValue(t.value, unit)
	case atLeast:
		return "≥ " + fmtValue(t.value, unit)
	case atMost:
		return "≤ " + fmtValue(t.value, unit)
	}
	return "—"
}

// compared is the value the target judges, for one run.
func (t target) compared(berth, base float64) float64 {
	switch t.kind {
	case ratioAtMost, ratioAtLeast:
		if base == 0 {
			return math.NaN()
		}
		return berth / base
	case deltaAtMost:
		return berth - base
	}
	return berth
}

func (t target) met(v float64) bool {
	switch t.kind {
	case ratioAtMost, deltaAtMost, atMost:
		return v <= t.value
	case ratioAtLeast, atLeast:
		return v >= t.value
	}
	return true
}

// newRow builds a figure's row from its per-run values.
func newRow(scenario string, f figureSpec, runs []RunFigure, notes []string) Row {
	row := Row{
		Scenario:     scenario,
		Figure:       f.name,
		Unit:         f.unit,
		BaselineName: f.baseline,
		Method:       f.method,
		Target:       f.target.String(f.unit),
		PerRun:       runs,
		Notes:        notes,
		goal:         f.target,
	}
	if len(runs) == 0 {
		row.Status = StatusError
		row.Why = "no run produced this figure"
		return row
	}
	var berth, base, cmp []float64
	for _, r := range runs {
		berth = append(berth, r.Berth)
		base = append(base, r.Baseline)
		cmp = append(cmp, f.target.compared(r.Berth, r.Baseline))
	}
	row.Berth = ptr(median(berth))
	if f.baseline != "" {
		row.Baseline = ptr(median(base))
	}
	if f.target.kind == noTarget {
		row.Status = StatusInfo
		return row
	}
	c := median(cmp)
	if math.IsNaN(c) {
		row.Status = StatusError
		row.Why = "baseline was zero"
		return row
	}
	row.Compared = ptr(c)
	row.Status = StatusMiss
	if f.target.met(c) {
		row.Status = StatusPass
	}
	return row
}

func ptr(v float64) *float64 { return &v }

// median of xs (NaNs sort first and are not skipped: a run that failed
// must not look like a good one). xs is not modified.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// percentile of sorted by the nearest-rank method: the smallest value with
// at least p percent of the samples at or below it.
func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

// durationsIn converts durations to float64 in unit, sorted.
func durationsIn(ds []time.Duration, unit time.Duration) []float64 {
	out := make([]float64, len(ds))
	for i, d := range ds {
		out[i] = float64(d) / float64(unit)
	}
	slices.Sort(out)
	return out
}

func fmtRatio(r float64) string {
	return fmt.Sprintf("%.2f×", r)
}

// shown formats the compared value v of a ratio or difference target. When
// v rounds to the target's own figure it gets more digits, until the two
// differ, so that a miss never reads as the target (0.996× against ≥ 1.00×
// shows as 0.996×).
func (t target) shown(v float64, unit string) string {
	var format func(prec int, x float64) string
	first := 2
	switch t.kind {
	case ratioAtMost, ratioAtLeast:
		format = func(prec int, x float64) string { return strconv.FormatFloat(x, 'f', prec, 64) + "×" }
	case deltaAtMost:
		s := fmtSigned(v, unit)
		if s != fmtSigned(t.value, unit) || v == t.value || unit != "µs" {
			return s
		}
		format = func(prec int, x float64) string { return "+" + strconv.FormatFloat(x, 'f', prec, 64) + " µs" }
		first = 1
	default:
		return "—"
	}
	for prec := first; prec < 10; prec++ {
		if s := format(prec, v); s != format(prec, t.value) || v == t.value {
			return s
		}
	}
	return format(-1, v) // as many digits as v has
}

// fmtValue formats v in unit with a precision that suits it.
func fmtValue(v float64, unit string) string {
	if math.IsNaN(v) {
		return "n/a"
	}
	switch unit {
	case "/s":
		return thousands(v) + "/s"
	case "µs":
		if math.Abs(v) >= 1000 {
			return fmt.Sprintf("%.2f ms", v/1000)
		}
		return fmt.Sprintf("%.0f µs", v)
	case "ms":
		return fmt.Sprintf("%.2f ms", v)
	case "KB":
		return fmt.Sprintf("%.1f KB", v)
	}
	return fmt.Sprintf("%.3g %s", v, unit)
}

func fmtSigned(v float64, unit string) string {
	if v >= 0 {
		return "+" + fmtValue(v, unit)
	}
	return "−" + fmtValue(-v, unit)
}

// thousands formats v rounded to an integer with thin thousands separators.
func thousands(v float64) string {
	s := fmt.Sprintf("%.0f", math.Abs(v))
	var b strings.Builder
	if v < 0 {
		b.WriteString("-")
	}
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// cells is the row as the table shows it.
func (r *Row) cells() []string {
	berth, base, cmp := "—", "—", "—"
	if r.Berth != nil {
		berth = fmtValue(*r.Berth, r.Unit)
	}
	if r.Baseline != nil {
		base = fmtValue(*r.Baseline, r.Unit) + " " + r.BaselineName
	}
	if r.Compared != nil {
		cmp = r.goal.shown(*r.Compared, r.Unit)
	}
	result := r.Status
	if r.Why != "" {
		result += ": " + r.Why
	}
	return []string{r.Figure, berth, base, cmp, r.Target, result}
}

var tableHeader = []string{"figure", "Berth", "baseline", "ratio", "target", "pass/miss"}

// WriteTable prints the report as a Markdown table with its context.
func (r *Report) WriteTable(w io.Writer) {
	rows := [][]string{tableHeader}
	for i := range r.Rows {
		rows = append(rows, r.Rows[i].cells())
	}
	fmt.Fprintf(w, "berth bench — %s — %s\n", r.Date.Format("2006-01-02 15:04 MST"), r.Machine)
	fmt.Fprintf(w, "command: %s\n", r.Command)
	if r.Revision != "" {
		fmt.Fprintf(w, "revision: %s\n", r.Revision)
	}
	if r.Quick {
		fmt.Fprintln(w, "sizes: --quick, tiny: this checks that every scenario runs; its figures mean little (the method text gives the full sizes)")
	}
	fmt.Fprintf(w, "load generator: %s\n", r.Generator)
	fmt.Fprintf(w, "runs: %d (Berth and baseline: medians of the per-run figures; ratio: median of the per-run ratios or differences)\n\n", r.Runs)
	writeMarkdown(w, rows)
	section := func(title string, items []string) {
		if len(items) == 0 {
			return
		}
		fmt.Fprintf(w, "\n%s\n", title)
		for _, it := range items {
			fmt.Fprintf(w, "- %s\n", it)
		}
	}
	var methods, details []string
	for _, row := range r.Rows {
		name := strings.TrimSpace(row.Figure)
		if row.Method != "" {
			methods = append(methods, name+": "+row.Method)
		}
		for _, n := range row.Notes {
			details = append(details, name+": "+n)
		}
	}
	section("How each figure is measured:", methods)
	section("Details:", append(details, r.Notes...))
}

// writeMarkdown writes rows (the first is the header) as an aligned
// Markdown table.
func writeMarkdown(w io.Writer, rows [][]string) {
	if len(rows) == 0 {
		return
	}
	width := make([]int, len(rows[0]))
	for _, row := range rows {
		for i, c := range row {
			width[i] = max(width[i], utf8.RuneCountInString(c))
		}
	}
	line := func(row []string) {
		var b strings.Builder
		b.WriteString("|")
		for i, c := range row {
			b.WriteString(" ")
			b.WriteString(c)
			b.WriteString(strings.Repeat(" ", width[i]-utf8.RuneCountInString(c)))
			b.WriteString(" |")
		}
		fmt.Fprintln(w, b.String())
	}
	line(rows[0])
	sep := make([]string, len(width))
	for i, n := range width {
		sep[i] = strings.Repeat("-", n)
	}
	line(sep)
	for _, row := range rows[1:] {
		line(row)
	}
}
