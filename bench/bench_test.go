package bench

import (
	"bufio"
	"bytes"
	"context"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	s := []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	for _, tc := range []struct {
		p    float64
		want float64
	}{
		{0, 1}, {10, 1}, {11, 2}, {50, 5}, {90, 9}, {99, 10}, {100, 10},
	} {
		if got := percentile(s, tc.p); got != tc.want {
			t.Errorf("percentile(1..10, %v) = %v, want %v", tc.p, got, tc.want)
		}
	}
	if got := percentile([]float64{7}, 99); got != 7 {
		t.Errorf("percentile of one sample = %v, want 7", got)
	}
	if got := percentile(nil, 50); !math.IsNaN(got) {
		t.Errorf("percentile of nothing = %v, want NaN", got)
	}
}

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{[]float64{3}, 3},
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5},
	} {
		in := append([]float64(nil), tc.in...)
		if got := median(tc.in); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
		}
		if !slicesEqual(in, tc.in) {
			t.Errorf("median modified its input: %v, was %v", tc.in, in)
		}
	}
}

func slicesEqual(a, b []float64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestNewRow(t *testing.T) {
	for _, tc := range []struct {
		name         string
		f            figureSpec
		runs         []RunFigure
		wantStatus   string
		wantCompared float64
	}{
		{"ratio at most, pass", figureSpec{name: "cold", unit: "ms", baseline: "exec", target: target{ratioAtMost, 1.5}},
			[]RunFigure{{12, 10}, {14, 10}, {30, 10}}, StatusPass, 1.4},
		{"ratio at most, miss", figureSpec{name: "cold", unit: "ms", baseline: "exec", target: target{ratioAtMost, 1.5}},
			[]RunFigure{{16, 10}, {20, 10}, {12, 10}}, StatusMiss, 1.6},
		{"ratio at least, miss", figureSpec{name: "rps", unit: "/s", baseline: "nginx", target: target{ratioAtLeast, 1.0}},
			[]RunFigure{{900, 1000}}, StatusMiss, 0.9},
		{"ratio at least, pass at equality", figureSpec{name: "rps", unit: "/s", baseline: "nginx", target: target{ratioAtLeast, 1.0}},
			[]RunFigure{{1000, 1000}}, StatusPass, 1},
		{"delta at most, pass", figureSpec{name: "lat", unit: "µs", baseline: "direct", target: target{deltaAtMost, 100}},
			[]RunFigure{{150, 60}, {170, 60}}, StatusPass, 100},
		{"delta at most, miss", figureSpec{name: "lat", unit: "µs", baseline: "direct", target: target{deltaAtMost, 100}},
			[]RunFigure{{200, 60}}, StatusMiss, 140},
		{"at least", figureSpec{name: "spawns", unit: "/s", target: target{atLeast, 300}},
			[]RunFigure{{310, 0}, {290, 0}, {305, 0}}, StatusPass, 305},
		{"at most", figureSpec{name: "mem", unit: "KB", target: target{atMost, 20}},
			[]RunFigure{{25, 0}}, StatusMiss, 25},
	} {
		t.Run(tc.name, func(t *testing.T) {
			row := newRow("s", tc.f, tc.runs, nil)
			if row.Status != tc.wantStatus {
				t.Errorf("status = %s, want %s", row.Status, tc.wantStatus)
			}
			if row.Compared == nil || math.Abs(*row.Compared-tc.wantCompared) > 1e-9 {
				t.Errorf("compared = %v, want %v", row.Compared, tc.wantCompared)
			}
		})
	}
	t.Run("info", func(t *testing.T) {
		row := newRow("s", figureSpec{name: "ceiling", unit: "/s"}, []RunFigure{{5, 0}, {7, 0}}, nil)
		if row.Status != StatusInfo || row.Berth == nil || *row.Berth != 6 || row.Baseline != nil {
			t.Errorf("row = %+v, want info with Berth 6 and no baseline", row)
		}
	})
	t.Run("no runs", func(t *testing.T) {
		row := newRow("s", figureSpec{name: "x", unit: "/s", target: target{atLeast, 1}}, nil, nil)
		if row.Status != StatusError {
			t.Errorf("status = %s, want error", row.Status)
		}
	})
}

// A figure that rounds to its target's own value shows more digits, so a
// miss never reads as the target.
func TestTarget_Shown(t *testing.T) {
	for _, tc := range []struct {
		t    target
		v    float64
		unit string
		want string
	}{
		{target{ratioAtLeast, 1}, 0.9964, "/s", "0.996×"},
		{target{ratioAtLeast, 1}, 1.0004, "/s", "1.0004×"},
		{target{ratioAtLeast, 1}, 1, "/s", "1.00×"},
		{target{ratioAtLeast, 1}, 0.97, "/s", "0.97×"},
		{target{ratioAtMost, 1.5}, 1.503, "ms", "1.503×"},
		{target{deltaAtMost, 100}, 100.4, "µs", "+100.4 µs"},
		{target{deltaAtMost, 100}, 99.6, "µs", "+99.6 µs"},
		{target{deltaAtMost, 100}, 96, "µs", "+96 µs"},
		{target{deltaAtMost, 1000}, 1000.3, "µs", "+1000.3 µs"},
		{target{deltaAtMost, 100}, -20, "µs", "−20 µs"},
		{target{deltaAtMost, 100}, 100.04, "µs", "+100.04 µs"},
		{target{ratioAtLeast, 1}, 0.99996, "/s", "0.99996×"},
		{target{ratioAtMost, 1.5}, 1.5 + 1e-12, "ms", "1.500000000001×"},
	} {
		if got := tc.t.shown(tc.v, tc.unit); got != tc.want {
			t.Errorf("%v.shown(%v) = %q, want %q", tc.t, tc.v, got, tc.want)
		}
	}
}

func TestReport_WriteTable(t *testing.T) {
	rep := &Report{
		Date: time.Date(2026, 1, 2, 3, 4, 0, 0, time.UTC), Machine: "nproc 2", Command: "berth bench", Generator: "wrk", Runs: 3,
		Rows: []Row{
			newRow("cold-process", figureSpec{name: "connect → ready, process, p50", unit: "ms", baseline: "exec", target: target{ratioAtMost, 1.5}},
				[]RunFigure{{11, 10}}, nil),
			newRow("latency", figureSpec{name: "proxy added latency p50", unit: "µs", baseline: "direct", target: target{deltaAtMost, 100}},
				[]RunFigure{{180, 60}}, []string{"a note"}),
			{Scenario: "cold-docker", Figure: "connect → ready, Docker, p50", Target: "≤ 1.10×", Status: StatusSkipped, Why: "no docker"},
		},
	}
	var b bytes.Buffer
	rep.WriteTable(&b)
	out := b.String()
	for _, want := range []string{
		"| figure ", "| pass/miss",
		"| connect → ready, process, p50 | 11.00 ms | 10.00 ms exec | 1.10×   | ≤ 1.50×   | pass               |",
		"| proxy added latency p50       | 180 µs   | 60 µs direct  | +120 µs | +≤ 100 µs | miss               |",
		"skipped: no docker",
		"- proxy added latency p50: a note",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	// Every table line has the same width, in runes.
	var width int
	for _, line := range strings.Split(out, "\n") {
		if !strings.HasPrefix(line, "|") {
			continue
		}
		n := len([]rune(line))
		if width == 0 {
			width = n
		} else if n != width {
			t.Errorf("line %q is %d runes wide, want %d", line, n, width)
		}
	}
}

func TestReadResponse(t *testing.T) {
	for _, tc := range []struct {
		name, in   string
		wantStatus int
		wantKeep   bool
		wantRest   string
	}{
		{"length", "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhello\nNEXT", 200, true, "NEXT"},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1;x=y\r\n!\r\n0\r\nT: v\r\n\r\nNEXT", 200, true, "NEXT"},
		{"close", "HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", 404, false, ""},
		{"HTTP/1.0", "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nxNEXT", 200, false, "NEXT"},
		{"no length", "HTTP/1.1 200 OK\r\n\r\nall of it", 200, false, ""},
		{"no body", "HTTP/1.1 204 No Content\r\n\r\nNEXT", 204, true, "NEXT"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			br := bufio.NewReader(strings.NewReader(tc.in))
			status, keep, err := readResponse(br)
			if err != nil {
				t.Fatal(err)
			}
			rest, _ := br.ReadString(0)
			if status != tc.wantStatus || keep != tc.wantKeep || rest != tc.wantRest {
				t.Errorf("got %d keep=%v rest %q, want %d keep=%v rest %q", status, keep, rest, tc.wantStatus, tc.wantKeep, tc.wantRest)
			}
		})
	}
	if _, _, err := readResponse(bufio.NewReader(strings.NewReader("garbage\r\n\r\n"))); err == nil {
		t.Error("garbage parsed without an error")
	}
}

// TestRun_Quick runs every scenario end to end at --quick sizes against a
// freshly built berth binary, and checks that each produced its figures
// (or was skipped for a stated reason). It checks no timing.
func TestRun_Quick(t *testing.T) {
	if testing.Short() {
		t.Skip("builds berth and runs every scenario; run without -short")
	}
	bin := filepath.Join(t.TempDir(), "berth")
	build := exec.Command("go", "build", "-o", bin, "github.com/berthhq/berth/cmd/berth")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build berth: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	var log bytes.Buffer
	rep, err := Run(ctx, Config{
		Quick:           true,
		ServerCommand:   []string{bin, "bench-server"},
		BackendFallback: []string{bin, "bench-backend"},
		Command:         "go test",
		Log:             &log,
	})
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, log.String())
	}
	var table bytes.Buffer
	rep.WriteTable(&table)
	t.Logf("\n%s", table.String())
	if broken := rep.Broken(); len(broken) > 0 {
		t.Errorf("scenarios failed: %v\n%s", broken, log.String())
	}
	want := 0
	for _, s := range scenarios {
		want += len(s.figures)
	}
	if len(rep.Rows) != want {
		t.Errorf("%d rows, want %d", len(rep.Rows), want)
	}
	for _, row := range rep.Rows {
		switch row.Status {
		case StatusSkipped:
			if row.Why == "" {
				t.Errorf("%s: skipped without a reason", row.Figure)
			}
			// CI installs nginx and wrk: there, the nginx baseline must run.
			if os.Getenv("CI") != "" && row.Scenario == "throughput" {
				t.Errorf("%s skipped in CI: %s", row.Figure, row.Why)
			}
		case StatusPass, StatusMiss:
			if row.Berth == nil || math.IsNaN(*row.Berth) || *row.Berth <= 0 {
				t.Errorf("%s: Berth figure %v, want a positive number", row.Figure, row.Berth)
			}
		case StatusInfo:
			if row.Berth == nil || math.IsNaN(*row.Berth) {
				t.Errorf("%s: Berth figure %v, want a number", row.Figure, row.Berth)
			}
		}
	}
}
