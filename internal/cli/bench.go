package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/berthhq/berth/bench"
	"github.com/berthhq/berth/internal/benchbackend"
)

func init() {
	register("bench", "measure Berth against its performance targets (see BENCHMARKS.md)", false, runBench)
	register("bench-server", "a Berth server for berth bench (run by it)", true, runBenchServer)
	register("bench-backend", "the backend berth bench spawns when it cannot build one", true, runBenchBackend)
}

const benchUsage = "berth bench [flags] [scenario…]"

func runBench(ctx context.Context, args []string, stdio Stdio) error {
	fs := newFlags("bench", benchUsage+"\n\nScenarios (default: all):\n"+bench.ScenarioHelp(), stdio)
	quick := fs.Bool("quick", false, "tiny sizes, one run: checks every scenario works (CI); the figures mean little")
	runs := fs.Int("runs", 0, "runs of each scenario; the table shows medians (default 3, or 1 with --quick)")
	asJSON := fs.Bool("json", false, "print the report as JSON instead of a table")
	profile := fs.String("profile", "", "write pprof profiles of the Berth server into `dir`, from the first run: CPU (throughput, latency, ws-latency, spawn-rate, warm-connect, https), block and mutex (spawn-rate), heap (idle-ws, connections open)")
	backend := fs.String("backend", "", "backend `binary` to spawn (default: build internal/benchbackend/cmd/benchbackend, else this binary's bench-backend)")
	keep := fs.Bool("keep", false, "keep the temporary directory (Berth's data, logs, nginx config)")
	verbose := fs.Bool("v", false, "log progress in detail")
	goroutines := fs.Bool("proxy-goroutines", false, "serve the proxy with a goroutine per connection instead of its event loops (to compare the two)")
	postgres := fs.String("postgres", envOr("BERTH_BENCH_POSTGRES", ""), "PostgreSQL `URL` for the replica scenarios, which make and drop a schema of their own there (BERTH_BENCH_POSTGRES; empty: they are skipped)")
	var kube bench.KubeConfig
	fs.StringVar(&kube.Kubeconfig, "kubeconfig", envOr("BERTH_BENCH_KUBECONFIG", ""), "kubeconfig `file` of a cluster with a kwok node, for the kubernetes scenario (BERTH_BENCH_KUBECONFIG; empty: it is skipped)")
	fs.StringVar(&kube.Namespace, "kube-namespace", envOr("BERTH_BENCH_KUBE_NAMESPACE", "default"), "namespace of the kubernetes scenario's Pods (BERTH_BENCH_KUBE_NAMESPACE)")
	fs.StringVar(&kube.NodeSelector, "kube-node-selector", envOr("BERTH_BENCH_KUBE_NODE_SELECTOR", "type=kwok"), "label=value of the kwok node (BERTH_BENCH_KUBE_NODE_SELECTOR)")
	rest, err := fs.parse(args)
	if err != nil {
		return err
	}
	if *runs < 0 {
		return usagef("--runs must be positive")
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find this binary: %w", err)
	}
	cfg := bench.Config{
		Scenarios:       rest,
		Quick:           *quick,
		Runs:            *runs,
		ProfileDir:      *profile,
		ServerCommand:   []string{exe, "bench-server"},
		BackendFallback: []string{exe, "bench-backend"},
		KeepDir:         *keep,
		Verbose:         *verbose,
		Command:         strings.TrimSpace("berth bench " + strings.Join(args, " ")),
		Log:             stdio.Err,
		Postgres:        *postgres,
		Kube:            kube,
		ProxyGoroutines: *goroutines,
	}
	if *backend != "" {
		cfg.Backend = []string{*backend}
	}
	if err := cfg.Validate(); err != nil {
		return usagef("%v", err)
	}
	rep, err := bench.Run(ctx, cfg)
	if rep != nil {
		if *asJSON {
			enc := json.NewEncoder(stdio.Out)
			enc.SetIndent("", "  ")
			enc.Encode(rep)
		} else {
			rep.WriteTable(stdio.Out)
		}
	}
	if err != nil {
		return err
	}
	// A miss is a finding, not a failure; a scenario that could not run is.
	if broken := rep.Broken(); len(broken) > 0 {
		return fmt.Errorf("scenarios failed to run: %s", strings.Join(broken, ", "))
	}
	return nil
}

// runBenchServer is a Berth server assembled exactly as `berth serve` does
// it, plus a debug listener (pprof, memory statistics) for the bench. It
// prints one JSON line with its addresses once every listener is up, and
// runs until it is signalled.
func runBenchServer(ctx context.Context, args []string, stdio Stdio) error {
	var o serverOptions
	fs := newFlags("bench-server", "berth bench-server --api-key KEY [flags]", stdio)
	o.flags(fs.FlagSet)
	fs.StringVar(&o.APIKey, "api-key", envOr("BERTH_API_KEY", ""), "API key (BERTH_API_KEY; required)")
	debugAddr := fs.String("debug-addr", "127.0.0.1:0", "pprof and memory statistics listen address")
	if _, err := fs.parse(args); err != nil {
		return err
	}
	if o.APIKey == "" {
		return usagef("--api-key (or BERTH_API_KEY) is required")
	}
	debugLn, err := net.Listen("tcp", *debugAddr)
	if err != nil {
		return fmt.Errorf("debug listener: %w", err)
	}
	debugSrv := &http.Server{Handler: debugMux(), ReadHeaderTimeout: 10 * time.Second}
	go debugSrv.Serve(debugLn)
	defer debugSrv.Close()
	return serve(ctx, &o, stdio, func(s *runningServer) {
		line, _ := json.Marshal(bench.ServerInfo{
			API:      s.apiURL,
			Proxy:    s.public,
			Debug:    "http://" + debugLn.Addr().String(),
			Runtimes: s.runtime,
			PID:      os.Getpid(),
		})
		fmt.Fprintf(stdio.Out, "%s\n", line)
	})
}

// debugMux serves pprof and /debug/memstats, which first returns freed
// memory to the OS when asked (?free=1), so that the bench reads RSS after
// a collection.
func debugMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	// Block and mutex profiling cost time on every contended operation, so
	// the bench turns them on only around the scenario it profiles.
	mux.HandleFunc("POST /debug/contention", func(w http.ResponseWriter, r *http.Request) {
		rate, err := strconv.Atoi(r.URL.Query().Get("rate"))
		if err != nil || rate < 0 {
			http.Error(w, "rate: a non-negative integer", http.StatusBadRequest)
			return
		}
		runtime.SetBlockProfileRate(rate)
		runtime.SetMutexProfileFraction(rate)
	})
	mux.HandleFunc("GET /debug/memstats", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("free") == "1" {
			debug.FreeOSMemory()
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(bench.MemStats{
			HeapInuse:  ms.HeapInuse,
			StackInuse: ms.StackInuse,
			Sys:        ms.Sys,
			Goroutines: runtime.NumGoroutine(),
		})
	})
	return mux
}

func runBenchBackend(ctx context.Context, args []string, stdio Stdio) error {
	if len(args) > 0 {
		return usagef("takes no arguments; it listens on $PORT")
	}
	err := benchbackend.Main()
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}
