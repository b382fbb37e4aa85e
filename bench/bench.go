// Package bench is `berth bench`: it starts a Berth server, the bench
// backend and the baselines (nginx, a bare exec, `docker run`) on
// loopback, runs the scenarios side by side in one run, and reports each
// figure against its target as a ratio, a difference or an absolute rate.
//
// Honesty rules the code keeps: Berth and its baseline are measured by the
// same client against the same backend process, alternately, in the same
// run; Berth runs as its own process (the server of `berth serve`, started
// through the hidden `berth bench-server`), so the load generators and the
// backends never share its heap; a miss is reported, never retried away.
// Timing thresholds never go into tests: this package's tests check that
// the scenarios run and the arithmetic is right, not that Berth is fast.
package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Config configures a bench run.
type Config struct {
	// Scenarios to run, by name; empty means all.
	Scenarios []string
	// Quick makes every scenario tiny, to check that it works (CI).
	Quick bool
	// Runs of each scenario; 0 means 3, or 1 with Quick.
	Runs int
	// ProfileDir, if set, receives pprof profiles of the Berth server.
	ProfileDir string
	// Backend is the backend's command line; empty means build
	// BackendPackage, else BackendFallback.
	Backend         []string
	BackendFallback []string
	// ServerCommand starts a Berth server that prints ServerInfo as one
	// JSON line once it is up: `berth bench-server`. It is given
	// serve's flags (--data-dir, --api-addr, …).
	ServerCommand []string
	// KeepDir keeps the temporary directory.
	KeepDir bool
	Verbose bool
	// Command is the command line, for the report.
	Command string
	// Log receives progress; nil discards it.
	Log io.Writer
	// ProxyGoroutines serves the bench's Berth proxy with a goroutine per
	// connection instead of its event loops, to compare the two.
	ProxyGoroutines bool
	// Postgres is a PostgreSQL URL for the replica scenarios, which make
	// (and drop) a schema of their own there; empty skips them.
	Postgres string
	// Kube is where the kubernetes scenario runs; without a kubeconfig it
	// is skipped.
	Kube KubeConfig
}

// Validate reports the first problem with the config.
func (c *Config) Validate() error {
	if len(c.ServerCommand) == 0 {
		return errors.New("bench: ServerCommand is required")
	}
	if c.Runs < 0 {
		return errors.New("bench: Runs must not be negative")
	}
	for _, name := range c.Scenarios {
		if findScenario(name) == nil {
			return fmt.Errorf("unknown scenario %q; scenarios are: %s", name, strings.Join(scenarioNames(), ", "))
		}
	}
	return nil
}

func (c *Config) runs() int {
	switch {
	case c.Runs > 0:
		return c.Runs
	case c.Quick:
		return 1
	}
	return 3
}

// idleConns is how many WebSockets the idle scenario holds open.
func (c *Config) idleConns() int {
	if c.Quick {
		return 500
	}
	return 10000
}

// size picks the full or the quick value.
func size[T any](c *Config, full, quick T) T {
	if c.Quick {
		return quick
	}
	return full
}

// scenario is one thing the bench measures; it yields one or more figures.
type scenario struct {
	name    string
	summary string
	figures []figureSpec
	// skip says why the scenario cannot run here, or "".
	skip func(ctx context.Context, e *env) string
	run  func(ctx context.Context, e *env, r *runCtx) (*result, error)
}

type figureSpec struct {
	name     string
	unit     string
	baseline string // what the baseline is, or "" for none
	target   target
	method   string // how it is measured, for the report
}

// result is one run of a scenario.
type result struct {
	values  map[string]RunFigure
	notes   map[string]string // by figure
	skipped map[string]string // figures that could not be measured, and why
	// missed marks figures that miss whatever their value (the scenario
	// could not reach its size), and why.
	missed map[string]string
}

func newResult() *result {
	return &result{values: map[string]RunFigure{}, notes: map[string]string{}, skipped: map[string]string{}, missed: map[string]string{}}
}

// runCtx is what a scenario's run knows beyond the env.
type runCtx struct {
	n       int // 1-based run number
	profile string
	log     func(format string, args ...any)
	wg      *sync.WaitGroup
}

// cpuProfile records a CPU profile of the Berth server for d, in the
// background, into the profile directory; only in the first run.
func (r *runCtx) cpuProfile(e *env, name string, d time.Duration) {
	r.cpuProfileOf(e, e.berth, name, d)
}

// cpuProfileOf is cpuProfile for the server b (a scenario's own).
func (r *runCtx) cpuProfileOf(e *env, b *berthServer, name string, d time.Duration) {
	if r.profile == "" || r.n != 1 || b == nil {
		return
	}
	secs := max(1, int(d/time.Second))
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		path := filepath.Join(r.profile, name+".cpu.pprof")
		if err := fetch(e, b.Debug+"/debug/pprof/profile?seconds="+strconv.Itoa(secs), path); err != nil {
			r.log("CPU profile %s: %v", name, err)
			return
		}
		r.log("wrote %s (%ds of Berth's CPU)", path, secs)
	}()
}

// contention turns on block and mutex profiling in the Berth server (first
// run only) and returns a function that saves both profiles and turns
// profiling off again.
func (r *runCtx) contention(ctx context.Context, e *env, name string) func() {
	if r.profile == "" || r.n != 1 {
		return func() {}
	}
	set := func(rate int) error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, e.berth.Debug+"/debug/contention?rate="+strconv.Itoa(rate), nil)
		res, err := e.hc.Do(req)
		if err != nil {
			return err
		}
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			return fmt.Errorf("set contention profiling: %s", res.Status)
		}
		return nil
	}
	if err := set(1); err != nil {
		r.log("contention profile %s: %v", name, err)
		return func() {}
	}
	return func() {
		for _, kind := range []string{"block", "mutex"} {
			path := filepath.Join(r.profile, name+"."+kind+".pprof")
			if err := fetch(e, e.berth.Debug+"/debug/pprof/"+kind, path); err != nil {
				r.log("%s profile %s: %v", kind, name, err)
			} else {
				r.log("wrote %s", path)
			}
		}
		if err := set(0); err != nil {
			r.log("contention profile %s: %v", name, err)
		}
	}
}

// heapProfile saves the Berth server's heap profile and its goroutines now.
func (r *runCtx) heapProfile(e *env, name string) {
	if r.profile == "" || r.n != 1 {
		return
	}
	for _, p := range []struct{ file, url string }{
		{name + ".heap.pprof", "/debug/pprof/heap?gc=1"},
		{name + ".goroutines.txt", "/debug/pprof/goroutine?debug=1"},
	} {
		path := filepath.Join(r.profile, p.file)
		if err := fetch(e, e.berth.Debug+p.url, path); err != nil {
			r.log("profile %s: %v", p.file, err)
			continue
		}
		r.log("wrote %s", path)
	}
}

func fetch(e *env, u, path string) error {
	res, err := e.hc.Get(u)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", u, res.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, res.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func findScenario(name string) *scenario {
	for _, s := range scenarios {
		if s.name == name {
			return s
		}
	}
	return nil
}

func scenarioNames() []string {
	var names []string
	for _, s := range scenarios {
		names = append(names, s.name)
	}
	return names
}

// ScenarioHelp lists the scenarios for the command's usage.
func ScenarioHelp() string {
	var b strings.Builder
	for _, s := range scenarios {
		fmt.Fprintf(&b, "  %-14s %s\n", s.name, s.summary)
	}
	return b.String()
}

// Run runs the bench and returns its report. An error means the bench
// itself could not run (no server, no backend); a scenario that fails is
// an error row in the report instead.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
	selected := scenarios
	if len(cfg.Scenarios) > 0 {
		selected = nil
		for _, s := range scenarios { // in the table's order
			if slices.Contains(cfg.Scenarios, s.name) {
				selected = append(selected, s)
			}
		}
	}
	if cfg.ProfileDir != "" {
		if err := os.MkdirAll(cfg.ProfileDir, 0o755); err != nil {
			return nil, err
		}
	}
	rep := &Report{
		Date:     time.Now(),
		Machine:  machine(),
		Command:  cfg.Command,
		Runs:     cfg.runs(),
		Quick:    cfg.Quick,
		Revision: revision(),
	}
	loadStart := loadAvg()
	cpu := meterCPU()
	e, err := newEnv(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer e.close()
	rep.Generator = generator(e)
	defer func() {
		_, busy := cpu.stop()
		rep.Notes = append(rep.Notes, fmt.Sprintf("machine: load average %s at the start, %s at the end; CPU %.0f%% busy over the whole bench (everything else running on the machine skews the figures)",
			loadStart, loadAvg(), 100*busy))
	}()

	type acc struct {
		runs    map[string][]RunFigure
		notes   map[string][]string
		skipped map[string]string
		missed  map[string]string
		err     error
		why     string // the whole scenario was skipped
	}
	accs := make(map[string]*acc)
	for _, s := range selected {
		a := &acc{runs: map[string][]RunFigure{}, notes: map[string][]string{}, skipped: map[string]string{}, missed: map[string]string{}}
		accs[s.name] = a
		if s.skip != nil {
			a.why = s.skip(ctx, e)
		}
	}
	var wg sync.WaitGroup
	for n := 1; n <= rep.Runs; n++ {
		for _, s := range selected {
			a := accs[s.name]
			if a.why != "" || a.err != nil {
				continue
			}
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			e.log("run %d/%d: %s", n, rep.Runs, s.name)
			rc := &runCtx{n: n, profile: cfg.ProfileDir, log: e.log, wg: &wg}
			start := time.Now()
			res, err := s.run(ctx, e, rc)
			wg.Wait()
			if err == nil && !e.berth.alive() {
				err = fmt.Errorf("the Berth server exited:\n%s", tail(e.berth.logPath, 2000))
			}
			if err != nil {
				e.log("%s failed: %v", s.name, err)
				a.err = err
				continue
			}
			e.verbose("%s took %s", s.name, time.Since(start).Round(time.Millisecond))
			for _, f := range s.figures {
				if v, ok := res.values[f.name]; ok {
					a.runs[f.name] = append(a.runs[f.name], v)
				} else if why := res.skipped[f.name]; why != "" {
					a.skipped[f.name] = why
				}
				if why := res.missed[f.name]; why != "" {
					a.missed[f.name] = why
				}
				if note := res.notes[f.name]; note != "" {
					if rep.Runs > 1 {
						note = fmt.Sprintf("run %d: %s", n, note)
					}
					a.notes[f.name] = append(a.notes[f.name], note)
				}
			}
		}
	}
	for _, s := range selected {
		a := accs[s.name]
		for _, f := range s.figures {
			row := newRow(s.name, f, a.runs[f.name], a.notes[f.name])
			switch {
			case a.why != "":
				row.Status, row.Why = StatusSkipped, a.why
			case a.err != nil:
				row.Status, row.Why = StatusError, oneLine(a.err.Error())
				row.Notes = append(row.Notes, "error: "+a.err.Error())
			case a.skipped[f.name] != "" && len(a.runs[f.name]) == 0:
				row.Status, row.Why = StatusSkipped, a.skipped[f.name]
			case a.missed[f.name] != "":
				row.Status, row.Why = StatusMiss, a.missed[f.name]
			}
			rep.Rows = append(rep.Rows, row)
		}
	}
	return rep, nil
}

func oneLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 120 {
		s = s[:117] + "…"
	}
	return s
}

func generator(e *env) string {
	inproc := "the bench's in-process Go HTTP/1.1 client (raw keep-alive connections)"
	if e.wrk == nil {
		return inproc + " for everything (wrk is not installed: apt-get install wrk)"
	}
	return e.wrk.version + " (-t2 -c32) for proxy throughput and warm connects; " + inproc + " for latencies, WebSockets, cold starts and spawns"
}

// revision is the git commit of the working directory, marked dirty when
// it has changes, or "" outside a git checkout.
func revision() string {
	out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return ""
	}
	rev := strings.TrimSpace(string(out))
	if st, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(bytes.TrimSpace(st)) > 0 {
		rev += " with uncommitted changes"
	}
	return rev
}

// loadAvg is the 1-minute load average.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

// machine describes this host: CPUs, CPU model, memory, kernel, Go.
func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				kb, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
				mem = fmt.Sprintf(", %.0f GiB RAM", kb/(1<<20))
			}
		}
	}
	kernel := ""
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = ", Linux " + strings.TrimSpace(string(b))
	}
	return fmt.Sprintf("nproc %d, %s%s%s, %s", runtime.NumCPU(), model, mem, kernel, runtime.Version())
}
