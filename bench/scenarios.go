package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
	"github.com/berthhq/berth/internal/benchbackend"
)

// scenarios in the order of the table.
var scenarios = []*scenario{
	{
		name:    "cold-process",
		summary: "connect → first HTTP 200 through the proxy, process runtime, vs exec of the same binary → first 200",
		figures: []figureSpec{
			{name: "connect → ready, process, p50", unit: "ms", baseline: "exec", target: target{ratioAtMost, 1.5},
				method: "Berth: POST /v1/connect for a new key (wait=false), then GET the returned URL through the proxy until a 200; then a hard terminate, waited out. Baseline: exec the same binary with PORT set, GET it directly until a 200. Same polling client (a new connection per attempt, 100 µs apart as asked of Go's timers, which in an idle process wake after ~1.1 ms; so does Berth's probe), alternating, 15 samples each per run (after 2 discarded); phases from Berth's own event timestamps"},
		},
		run: runColdProcess,
	},
	{
		name:    "cold-docker",
		summary: "connect → first HTTP 200, docker runtime, vs `docker run` of the same image → first 200",
		figures: []figureSpec{
			{name: "connect → ready, Docker, p50", unit: "ms", baseline: "docker run", target: target{ratioAtMost, 1.1},
				method: "as the process row, with spawn.image: a FROM scratch image of the bench backend built through the Engine API; baseline `docker run -d -p 127.0.0.1:PORT:8080` of the same image, polled until a 200, then removed"},
		},
		skip: skipDocker,
		run:  runColdDocker,
	},
	{
		name:    "throughput",
		summary: "proxy HTTP throughput, 32 keep-alive connections, vs nginx proxying the same backend",
		figures: []figureSpec{
			{name: "proxy HTTP throughput, 32 conns", unit: "/s", baseline: "nginx", target: target{ratioAtLeast, 1.0},
				method: "GET / of the bench backend (6-byte body) over 32 keep-alive connections, through Berth's proxy and through nginx (generated config: worker_processes auto, upstream keepalive, access log off, the headers Berth's proxy adds) to the same backend process: after 2 s of warm-up each, 5 blocks of 2 s each, taking turns; CPU per request from /proc/PID/stat of the proxy's processes and the backend's, and wrk's own rusage"},
			{name: "backend alone, 32 conns (ceiling)", unit: "/s",
				method: "the same load straight to the backend: what the machine allows with no proxy taking CPU"},
		},
		run: runThroughput,
	},
	{
		name:    "latency",
		summary: "added latency of the proxy: sequential GETs on one keep-alive connection, vs direct",
		figures: []figureSpec{
			{name: "proxy added latency p50", unit: "µs", baseline: "direct", target: target{deltaAtMost, 100},
				method: "20,000 sequential GETs on one keep-alive connection through the proxy, and as many straight to the backend (and through nginx, for reference), in alternating blocks of 500; Berth and baseline are the percentiles of each, the ratio column their difference"},
			{name: "proxy added latency p99", unit: "µs", baseline: "direct", target: target{deltaAtMost, 1000},
				method: "as the p50 row"},
		},
		run: runLatency,
	},
	{
		name:    "ws-latency",
		summary: "added WebSocket echo round trip through the proxy, vs direct",
		figures: []figureSpec{
			{name: "WebSocket echo RTT added p50", unit: "µs", baseline: "direct", target: target{deltaAtMost, 50},
				method: "20,000 sequential 32-byte binary messages echoed by the backend, on one WebSocket through the proxy and one straight to the backend (and one through nginx, for reference), in alternating blocks of 500"},
			{name: "WebSocket echo RTT p99", unit: "µs", baseline: "direct",
				method: "as the p50 row"},
		},
		run: runWSLatency,
	},
	{
		name:    "spawn-rate",
		summary: "cold spawns per second (connect with wait=true until ready; each hard-terminated at once)",
		figures: []figureSpec{
			{name: "cold spawns/s, process (spawned and ready)", unit: "/s", baseline: "exec", target: target{atLeast, 300},
				method: "16 workers for 10 s, each in a loop: POST /v1/connect for a new key with wait=true, count the spawn when the answer says ready (spawned AND ready, not merely accepted), then terminate it (hard) so live backends stay few; a spawn that ends another way counts as failed. Baseline (for scale, not judged): as many workers exec'ing the same binary, polling it to its first 200 and SIGKILLing it"},
		},
		run: runSpawnRate,
	},
	{
		name:    "warm-connect",
		summary: "connects to a live key per second, 32 concurrent keep-alive clients",
		figures: []figureSpec{
			{name: "warm connects/s (live key)", unit: "/s", target: target{atLeast, 20000},
				method: "POST /v1/connect {key, spawn, user} with the API key for a key whose backend is live, over 32 keep-alive connections for 5 s (after 1 s of warm-up); afterwards the key must still name the same backend"},
		},
		run: runWarmConnect,
	},
	{
		name:    "idle-ws",
		summary: "Berth's memory per idle WebSocket through the proxy (10,000; 500 with --quick)",
		figures: []figureSpec{
			{name: "Berth memory per idle WebSocket", unit: "KB", target: target{atMost, 20},
				method: "Berth runs as its own process (clients in the bench, the backend in its own): open N WebSockets through the proxy (one echo each), wait 2 s, then compare with before: the larger of Berth's RSS growth (/proc/PID/status, read right after debug.FreeOSMemory in Berth) and its Go heap-in-use + stack growth (runtime.MemStats), divided by N. RSS misses allocated pages never touched (idle copy buffers); the heap misses runtime overhead. KB = 1024 bytes"},
			{name: "  of which RSS growth", unit: "KB"},
			{name: "  of which Go heap+stacks growth", unit: "KB"},
		},
		run: runIdleWS,
	},
}

// pollUntil200 is the polling client both sides of a cold start use: a
// fresh connection per attempt (a refused one costs microseconds), 100 µs
// between failed attempts, until a 200. Like Berth's readiness probe it
// waits on a Go timer, which wakes an idle process after ~1.1 ms (the
// runtime's poller waits in whole milliseconds); sleeping in the kernel
// for 100 µs instead was tried on both sides and made no start faster
// (BENCHMARKS.md). It gives up early when exited is
// closed (the process it waits for is gone).
func pollUntil200(ctx context.Context, addr, path string, timeout time.Duration, exited <-chan struct{}) error {
	rc := newRawClient(addr, getRequest(addr, path))
	defer rc.Close()
	deadline := time.Now().Add(timeout)
	rc.deadline = deadline
	for {
		st, err := rc.Do()
		rc.Close()
		if err == nil && st == 200 {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("status %d", st)
		}
		select {
		case <-exited:
			return fmt.Errorf("the backend exited before it answered 200 (last attempt: %w)", err)
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no 200 from %s%s within %s: %w", addr, path, timeout, err)
		}
		time.Sleep(100 * time.Microsecond)
	}
}

func splitURL(u string) (host, path string, err error) {
	p, err := url.Parse(u)
	if err != nil {
		return "", "", err
	}
	return p.Host, p.EscapedPath(), nil
}

// coldBerth connects a new key (wait=false, as an application server
// would before handing the URL to a browser) and polls the returned URL
// through the proxy until it answers 200. The backend is then terminated.
func (e *env) coldBerth(ctx context.Context, key string, spawn *berth.SpawnConfig, ph *phases) (time.Duration, error) {
	return e.coldVia(ctx, e.api, key, spawn, ph)
}

// coldVia is coldBerth through the API of c.
func (e *env) coldVia(ctx context.Context, c *api.Client, key string, spawn *berth.SpawnConfig, ph *phases) (time.Duration, error) {
	start := time.Now()
	res, err := c.Connect(ctx, api.ConnectRequest{Key: key, Spawn: spawn, User: "bench"})
	if err != nil {
		return 0, fmt.Errorf("connect: %w", err)
	}
	host, path, err := splitURL(res.URL)
	if err != nil {
		return 0, err
	}
	err = pollUntil200(ctx, host, path, 60*time.Second, nil)
	d := time.Since(start)
	if terr := terminateVia(ctx, c, res.BackendID); err == nil && terr != nil {
		err = fmt.Errorf("terminate: %w", terr)
	}
	if err == nil && ph != nil {
		err = e.addPhasesVia(ctx, c, ph, res.BackendID, start, start.Add(d))
	}
	return d, err
}

// coldExec runs the same backend binary with only PATH and PORT and polls
// it directly until it answers 200, then kills it.
func (e *env) coldExec(ctx context.Context) (time.Duration, error) {
	// A port found free can be taken before the backend binds it (seen
	// rarely under load, by what is not clear): that attempt measures
	// nothing, so it is made again on another port.
	for range 4 {
		d, err := e.coldExecOnce(ctx)
		if err == nil || !strings.Contains(err.Error(), "address already in use") {
			return d, err
		}
	}
	return e.coldExecOnce(ctx)
}

func (e *env) coldExecOnce(ctx context.Context) (time.Duration, error) {
	port, err := freePort()
	if err != nil {
		return 0, err
	}
	var out bytes.Buffer
	cmd := exec.Command(e.backend[0], e.backend[1:]...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "PORT=" + strconv.Itoa(port)}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Stdout, cmd.Stderr = &out, &out
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	err = pollUntil200(ctx, addr, "/", 60*time.Second, exited)
	d := time.Since(start)
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	<-exited
	if err != nil {
		return 0, fmt.Errorf("%w; its output: %q", err, out.String())
	}
	return d, nil
}

// coldPair measures n Berth cold starts and n baseline ones, alternating
// which goes first, after warm discarded pairs.
func coldPair(ctx context.Context, n, warm int, berthFn, baseFn func(i int) (time.Duration, error)) (b, x []time.Duration, err error) {
	for i := range warm + n {
		var db, dx time.Duration
		if i%2 == 0 {
			if db, err = berthFn(i); err == nil {
				dx, err = baseFn(i)
			}
		} else {
			if dx, err = baseFn(i); err == nil {
				db, err = berthFn(i)
			}
		}
		if err != nil {
			return nil, nil, err
		}
		if i >= warm {
			b, x = append(b, db), append(x, dx)
		}
	}
	return b, x, nil
}

func coldResult(name string, b, x []time.Duration, ph *phases) *result {
	res := newResult()
	bs, xs := durationsIn(b, time.Millisecond), durationsIn(x, time.Millisecond)
	res.values[name] = RunFigure{Berth: percentile(bs, 50), Baseline: percentile(xs, 50)}
	// The difference is Berth's own cost, which does not scale with the
	// machine as the baseline does: it compares across machines.
	res.notes[name] = fmt.Sprintf("Berth − baseline at p50 %+.2f ms; p90 Berth %.2f ms, baseline %.2f ms; min %.2f / %.2f ms",
		percentile(bs, 50)-percentile(xs, 50), percentile(bs, 90), percentile(xs, 90), bs[0], xs[0])
	if ph != nil {
		res.notes[name] += "; " + ph.String()
	}
	return res
}

func runColdProcess(ctx context.Context, e *env, r *runCtx) (*result, error) {
	n, warm := size(&e.cfg, 15, 3), size(&e.cfg, 2, 1)
	spawn := e.spawnConfig(60)
	var ph phases
	b, x, err := coldPair(ctx, n, warm,
		func(i int) (time.Duration, error) {
			p := &ph
			if i < warm {
				p = nil
			}
			return e.coldBerth(ctx, fmt.Sprintf("cold-%d-%d", r.n, i), spawn, p)
		},
		func(int) (time.Duration, error) { return e.coldExec(ctx) })
	if err != nil {
		return nil, err
	}
	return coldResult("connect → ready, process, p50", b, x, &ph), nil
}

func runThroughput(ctx context.Context, e *env, r *runCtx) (*result, error) {
	const conns = 32
	lb, err := e.liveBackend(ctx)
	if err != nil {
		return nil, err
	}
	// Berth and nginx take turns in blocks, so that the machine's drift
	// over a run (it is shared, and its speed wanders by 10 % within a
	// minute) falls on both alike.
	blocks, block, warm := size(&e.cfg, 5, 1), size(&e.cfg, 2*time.Second, time.Second), size(&e.cfg, 2*time.Second, 0)
	res := newResult()
	const fig, ceiling = "proxy HTTP throughput, 32 conns", "backend alone, 32 conns (ceiling)"

	type endpoint struct {
		name, addr, path string
		pids             []int // of the proxy
	}
	// measured sums a target's blocks.
	type measured struct {
		requests            float64       // completed 2xx responses
		secs                float64       // measured
		non2xx, errs        int64         // over all blocks
		proxy, backend, gen time.Duration // CPU used
		busy                float64       // the machine's CPU, weighted by secs
	}
	measure := func(t endpoint, into *measured) error {
		m := meterCPU(t.pids...)
		var mb *cpuMeter
		if lb.pid > 0 {
			mb = meterCPU(lb.pid)
		}
		lr, err := e.load(ctx, t.addr, t.path, conns, block, "", nil)
		used, busy := m.stop()
		if err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		if lr.Requests == 0 {
			return fmt.Errorf("%s: no successful requests (%d non-2xx, %d errors)", t.name, lr.Non2xx, lr.Errors)
		}
		secs := max(time.Second, block.Round(time.Second)).Seconds()
		into.requests += lr.Requests * secs
		into.secs += secs
		into.non2xx += lr.Non2xx
		into.errs += lr.Errors
		into.proxy += used
		into.gen += lr.GenCPU
		into.busy += busy * secs
		if mb != nil {
			bu, _ := mb.stop()
			into.backend += bu
		}
		return nil
	}
	perReq := func(m *measured, cpu time.Duration) float64 { return us(time.Duration(float64(cpu) / m.requests)) }
	rate := func(m *measured) float64 { return m.requests / m.secs }

	berthT := endpoint{name: "Berth", addr: lb.proxy, path: lb.prefix + "/", pids: []int{e.berth.PID}}
	targets := []endpoint{berthT}
	ng, nerr := e.nginxFor(ctx, lb)
	if nerr == nil {
		targets = append(targets, endpoint{name: "nginx", addr: ng.addr, path: "/", pids: ng.pids()})
	}
	for _, t := range targets {
		if warm > 0 {
			if _, err := e.load(ctx, t.addr, t.path, conns, warm, "", nil); err != nil {
				return nil, fmt.Errorf("%s: %w", t.name, err)
			}
		}
	}
	if r.profile != "" && r.n == 1 {
		// A load of its own, outside the measured blocks.
		d := max(time.Duration(blocks)*block, 2*time.Second) // the profile stops a second before the load
		r.cpuProfile(e, "throughput", d-time.Second)
		if _, err := e.load(ctx, berthT.addr, berthT.path, conns, d, "", nil); err != nil {
			return nil, err
		}
	}
	got := make([]measured, len(targets))
	for i := range blocks {
		for j := range targets {
			k := j
			if (i+r.n)%2 == 1 {
				k = len(targets) - 1 - j
			}
			if err := measure(targets[k], &got[k]); err != nil {
				return nil, err
			}
		}
	}
	bx := &got[0]
	switch {
	case nerr == nil:
		nx := &got[1]
		var others []string
		if lb.pid > 0 {
			others = append(others, fmt.Sprintf("backend %.1f / %.1f µs", perReq(bx, bx.backend), perReq(nx, nx.backend)))
		}
		if e.wrk != nil {
			others = append(others, fmt.Sprintf("wrk %.1f / %.1f µs", perReq(bx, bx.gen), perReq(nx, nx.gen)))
		}
		if len(others) == 0 {
			others = append(others, "not metered")
		}
		res.values[fig] = RunFigure{Berth: rate(bx), Baseline: rate(nx)}
		res.notes[fig] = fmt.Sprintf("CPU per request: proxy: Berth %.1f µs, %s (%d workers) %.1f µs; with Berth / with nginx: %s; machine CPU busy %.0f%% / %.0f%%; non-2xx/socket errors: Berth %d/%d, nginx %d/%d",
			perReq(bx, bx.proxy), ng.version, len(ng.pids())-1, perReq(nx, nx.proxy), strings.Join(others, ", "),
			100*bx.busy/bx.secs, 100*nx.busy/nx.secs, bx.non2xx, bx.errs, nx.non2xx, nx.errs)
	default:
		var ni *errNotInstalled
		if !errors.As(nerr, &ni) {
			return nil, nerr
		}
		res.skipped[fig] = nerr.Error()
		res.notes[fig] = fmt.Sprintf("Berth alone: %s; Berth CPU per request %.1f µs", fmtValue(rate(bx), "/s"), perReq(bx, bx.proxy))
	}
	var dx measured
	direct := endpoint{name: "direct", addr: lb.direct, path: "/"}
	if warm > 0 {
		if _, err := e.load(ctx, direct.addr, direct.path, conns, warm, "", nil); err != nil {
			return nil, err
		}
	}
	for range blocks {
		if err := measure(direct, &dx); err != nil {
			return nil, err
		}
	}
	res.values[ceiling] = RunFigure{Berth: rate(&dx)}
	res.notes[ceiling] = fmt.Sprintf("machine CPU busy %.0f%%", 100*dx.busy/dx.secs)
	return res, nil
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// load runs the load generator: wrk when installed, else the in-process one.
func (e *env) load(ctx context.Context, addr, path string, conns int, d time.Duration, auth string, body []byte) (loadResult, error) {
	if e.wrk != nil {
		return e.wrk.run(ctx, "http://"+addr+path, 2, conns, d, auth, body)
	}
	req := getRequest(addr, path)
	if body != nil {
		req = postRequest(addr, path, auth, body)
	}
	return loadGen(ctx, addr, req, conns, d), nil
}

// sequential measures several targets in turn, in blocks, so that drift
// on the machine hits all alike, and returns each one's n samples.
func sequential(n, block, warm int, fns ...func() (time.Duration, error)) ([][]time.Duration, error) {
	return sequentialMetered(n, block, warm, -1, 0, nil, fns...)
}

// sequentialMetered is sequential that also measures the CPU time of pid
// during the blocks of target metered (for the CPU each of its requests
// costs the server).
func sequentialMetered(n, block, warm, metered, pid int, cpu *time.Duration, fns ...func() (time.Duration, error)) ([][]time.Duration, error) {
	for range warm {
		for _, f := range fns {
			if _, err := f(); err != nil {
				return nil, err
			}
		}
	}
	out := make([][]time.Duration, len(fns))
	for i := range out {
		out[i] = make([]time.Duration, 0, n)
	}
	for len(out[0]) < n {
		k := min(block, n-len(out[0]))
		for i, f := range fns {
			var m *cpuMeter
			if i == metered {
				m = meterCPU(pid)
			}
			for range k {
				d, err := f()
				if err != nil {
					return nil, err
				}
				out[i] = append(out[i], d)
			}
			if m != nil {
				used, _ := m.stop()
				*cpu += used
			}
		}
	}
	return out, nil
}

func timed(rc *rawClient) func() (time.Duration, error) {
	return func() (time.Duration, error) {
		start := time.Now()
		st, err := rc.Do()
		d := time.Since(start)
		if err == nil && st != 200 {
			err = fmt.Errorf("GET %s: status %d", rc.addr, st)
		}
		return d, err
	}
}

func runLatency(ctx context.Context, e *env, r *runCtx) (*result, error) {
	lb, err := e.liveBackend(ctx)
	if err != nil {
		return nil, err
	}
	n, block, warm := size(&e.cfg, 20000, 300), size(&e.cfg, 500, 100), size(&e.cfg, 1000, 50)
	direct := newRawClient(lb.direct, getRequest(lb.direct, "/"))
	proxied := newRawClient(lb.proxy, getRequest(lb.proxy, lb.prefix+"/"))
	defer direct.Close()
	defer proxied.Close()
	fns := []func() (time.Duration, error){timed(proxied), timed(direct)}
	// nginx through the same extra hop, for reference: what a proxy costs
	// on this machine.
	if ng, err := e.nginxFor(ctx, lb); err == nil {
		viaNginx := newRawClient(ng.addr, getRequest(ng.addr, "/"))
		defer viaNginx.Close()
		fns = append(fns, timed(viaNginx))
	}
	var cpu time.Duration
	r.cpuProfile(e, "latency", size(&e.cfg, 5*time.Second, time.Second))
	samples, err := sequentialMetered(n, block, warm, 0, e.berth.PID, &cpu, fns...)
	if err != nil {
		return nil, err
	}
	p, d := durationsIn(samples[0], time.Microsecond), durationsIn(samples[1], time.Microsecond)
	res := newResult()
	const p50, p99 = "proxy added latency p50", "proxy added latency p99"
	res.values[p50] = RunFigure{Berth: percentile(p, 50), Baseline: percentile(d, 50)}
	res.values[p99] = RunFigure{Berth: percentile(p, 99), Baseline: percentile(d, 99)}
	note := fmt.Sprintf("p90 %.0f vs %.0f µs; Berth CPU per proxied request %.0f µs (/proc, 10 ms ticks over all blocks)", percentile(p, 90), percentile(d, 90), us(cpu)/float64(n))
	if len(samples) > 2 {
		x := durationsIn(samples[2], time.Microsecond)
		note += fmt.Sprintf("; nginx to the same backend, for reference: p50 %.0f µs (%s), p99 %.0f µs (%s)",
			percentile(x, 50), fmtSigned(percentile(x, 50)-percentile(d, 50), "µs"), percentile(x, 99), fmtSigned(percentile(x, 99)-percentile(d, 99), "µs"))
	}
	res.notes[p50] = note
	return res, nil
}

func dialWS(addr, path string) (*benchbackend.WSConn, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	ws, err := benchbackend.Handshake(c, addr, path)
	if err != nil {
		c.Close()
		return nil, err
	}
	return ws, nil
}

func runWSLatency(ctx context.Context, e *env, r *runCtx) (*result, error) {
	lb, err := e.liveBackend(ctx)
	if err != nil {
		return nil, err
	}
	n, block, warm := size(&e.cfg, 20000, 300), size(&e.cfg, 500, 100), size(&e.cfg, 1000, 50)
	direct, err := dialWS(lb.direct, "/ws")
	if err != nil {
		return nil, fmt.Errorf("direct WebSocket: %w", err)
	}
	defer direct.Close()
	proxied, err := dialWS(lb.proxy, lb.prefix+"/ws")
	if err != nil {
		return nil, fmt.Errorf("WebSocket through the proxy: %w", err)
	}
	defer proxied.Close()
	msg := []byte("0123456789abcdef0123456789abcdef") // 32 bytes, like a keystroke's message
	echo := func(ws *benchbackend.WSConn) func() (time.Duration, error) {
		return func() (time.Duration, error) {
			start := time.Now()
			err := ws.Echo(msg)
			return time.Since(start), err
		}
	}
	fns := []func() (time.Duration, error){echo(proxied), echo(direct)}
	// nginx through the same extra hop, for reference.
	if ng, err := e.nginxFor(ctx, lb); err == nil {
		viaNginx, err := dialWS(ng.addr, "/ws")
		if err != nil {
			return nil, fmt.Errorf("WebSocket through nginx: %w", err)
		}
		defer viaNginx.Close()
		fns = append(fns, echo(viaNginx))
	}
	var cpu time.Duration
	r.cpuProfile(e, "ws-latency", size(&e.cfg, 5*time.Second, time.Second))
	samples, err := sequentialMetered(n, block, warm, 0, e.berth.PID, &cpu, fns...)
	if err != nil {
		return nil, err
	}
	p, d := durationsIn(samples[0], time.Microsecond), durationsIn(samples[1], time.Microsecond)
	res := newResult()
	res.values["WebSocket echo RTT added p50"] = RunFigure{Berth: percentile(p, 50), Baseline: percentile(d, 50)}
	res.values["WebSocket echo RTT p99"] = RunFigure{Berth: percentile(p, 99), Baseline: percentile(d, 99)}
	note := fmt.Sprintf("p90 %.0f vs %.0f µs; Berth CPU per proxied echo %.0f µs", percentile(p, 90), percentile(d, 90), us(cpu)/float64(n))
	if len(samples) > 2 {
		x := durationsIn(samples[2], time.Microsecond)
		note += fmt.Sprintf("; nginx to the same backend, for reference: p50 %.0f µs (%s), p99 %.0f µs",
			percentile(x, 50), fmtSigned(percentile(x, 50)-percentile(d, 50), "µs"), percentile(x, 99))
	}
	res.notes["WebSocket echo RTT added p50"] = note
	return res, nil
}

func runSpawnRate(ctx context.Context, e *env, r *runCtx) (*result, error) {
	const fig = "cold spawns/s, process (spawned and ready)"
	workers, d := size(&e.cfg, 16, 8), size(&e.cfg, 10*time.Second, time.Second)
	var (
		note string
		rate float64
		err  error
	)
	// The floor beside it: the same binary exec'd, polled to its first 200
	// and killed, by as many workers, for as long.
	measureExec := func() (float64, error) {
		r, _, err := e.rate(ctx, workers, d, func(int, int) (time.Duration, error) { return e.coldExec(ctx) }, nil)
		return r, err
	}
	var execRate float64
	if r.n%2 == 0 {
		if execRate, err = measureExec(); err != nil {
			return nil, fmt.Errorf("exec baseline: %w", err)
		}
	}
	if rate, note, err = e.spawnRate(ctx, r, workers, d); err != nil {
		return nil, err
	}
	if r.n%2 != 0 {
		if execRate, err = measureExec(); err != nil {
			return nil, fmt.Errorf("exec baseline: %w", err)
		}
	}
	res := newResult()
	res.values[fig] = RunFigure{Berth: rate, Baseline: execRate}
	res.notes[fig] = note
	return res, nil
}

// errFailed marks an attempt that failed without breaking the scenario
// (a spawn that did not become ready): it is counted, and the worker goes on.
type errFailed struct{ err error }

func (e *errFailed) Error() string { return e.err.Error() }

// rate runs fn from workers goroutines for d and returns the completions
// per second inside d, and how many attempts failed with *errFailed. fn
// gets the worker and its iteration; observe, if set, sees each
// completion's latency and offset from the start.
func (e *env) rate(ctx context.Context, workers int, d time.Duration, fn func(w, i int) (time.Duration, error), observe func(lat, at time.Duration)) (float64, int64, error) {
	var (
		ok, failed atomic.Int64
		errOnce    sync.Once
		first      error
		wg         sync.WaitGroup
	)
	start := time.Now()
	deadline := start.Add(d)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; time.Now().Before(deadline) && ctx.Err() == nil; i++ {
				lat, err := fn(w, i)
				var fe *errFailed
				if errors.As(err, &fe) {
					failed.Add(1)
					continue
				}
				if err != nil {
					errOnce.Do(func() { first = err })
					return
				}
				if at := time.Since(start); at < d {
					ok.Add(1)
					if observe != nil {
						observe(lat, at)
					}
				}
			}
		}()
	}
	wg.Wait()
	if first != nil {
		return 0, 0, first
	}
	return float64(ok.Load()) / d.Seconds(), failed.Load(), nil
}

// spawnRate connects distinct keys with wait=true from workers goroutines
// for d, counting a spawn once its connect returns it ready, and
// hard-terminates each right after, so the machine is never full.
func (e *env) spawnRate(ctx context.Context, r *runCtx, workers int, d time.Duration) (float64, string, error) {
	base, err := e.liveCount(ctx)
	if err != nil {
		return 0, "", err
	}
	spawn := e.spawnConfig(60)
	type sample struct {
		id     string
		t0, t1 time.Time
	}
	var (
		mu      sync.Mutex
		lat     []time.Duration
		buckets = make([]int, max(1, int(d/time.Second)))
		samples []sample
	)
	// Sample the live count to show whether terminations keep up.
	peak := atomic.Int64{}
	sampleCtx, stopSampling := context.WithCancel(ctx)
	var sampler sync.WaitGroup
	sampler.Add(1)
	go func() {
		defer sampler.Done()
		for sampleCtx.Err() == nil {
			if n, err := e.liveCount(sampleCtx); err == nil && int64(n) > peak.Load() {
				peak.Store(int64(n))
			}
			select {
			case <-sampleCtx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	r.cpuProfile(e, "spawn-rate", d)
	saveContention := r.contention(ctx, e, "spawn-rate")
	m := meterCPU(e.berth.PID)
	var firstFailure atomic.Value
	rate, failed, err := e.rate(ctx, workers, d, func(w, i int) (time.Duration, error) {
		t0 := time.Now()
		res, err := e.api.Connect(ctx, api.ConnectRequest{
			Key: fmt.Sprintf("rate-%d-%d-%d", r.n, w, i), Spawn: spawn, User: "bench", Wait: true, WaitTimeoutSeconds: 30,
		})
		t1 := time.Now()
		if err != nil {
			return 0, fmt.Errorf("connect: %w", err)
		}
		if res.State != berth.StateReady {
			err := fmt.Errorf("backend %s is %s (%s), not ready", res.BackendID, res.State, res.Reason)
			if firstFailure.Load() == nil {
				var out bytes.Buffer
				if e.api.Logs(ctx, res.BackendID, false, &out) == nil && out.Len() > 0 {
					err = fmt.Errorf("%w; its output: %q", err, strings.TrimSpace(tailString(out.String(), 200)))
				}
			}
			firstFailure.CompareAndSwap(nil, err.Error())
			return 0, &errFailed{err}
		}
		if i%4 == 1 { // a sample, for the phase breakdown
			mu.Lock()
			samples = append(samples, sample{res.BackendID, t0, t1})
			mu.Unlock()
		}
		if err := e.api.Terminate(ctx, res.BackendID, true); err != nil {
			return 0, fmt.Errorf("terminate: %w", err)
		}
		return t1.Sub(t0), nil
	}, func(l, at time.Duration) {
		mu.Lock()
		lat = append(lat, l)
		buckets[min(int(at/time.Second), len(buckets)-1)]++
		mu.Unlock()
	})
	used, busy := m.stop()
	saveContention()
	drainStart := time.Now()
	derr := e.waitLive(ctx, base, 2*time.Minute)
	stopSampling()
	sampler.Wait()
	if err != nil {
		return 0, "", err
	}
	if derr != nil {
		return 0, "", fmt.Errorf("after the spawns: %w", derr)
	}
	if rate == 0 {
		return 0, "", fmt.Errorf("no spawn became ready (%d failed): %v", failed, firstFailure.Load())
	}
	drained := time.Since(drainStart)
	var ph phases
	for _, s := range samples[:min(len(samples), 40)] {
		if err := e.addPhases(ctx, &ph, s.id, s.t0, s.t1); err != nil {
			return 0, "", err
		}
	}
	ls := durationsIn(lat, time.Millisecond)
	failures := "none failed"
	if failed > 0 {
		failures = fmt.Sprintf("%d failed, the first: %s", failed, firstFailure.Load())
	}
	note := fmt.Sprintf("%s; connect→ready p50 %.1f ms, p99 %.1f ms; slowest 1-s window %d; peak live %d; all terminated %s after; Berth CPU per spawn %.2f ms, machine CPU busy %.0f%%; %s",
		failures, percentile(ls, 50), percentile(ls, 99), slices.Min(buckets), peak.Load(), drained.Round(10*time.Millisecond),
		float64(used)/float64(time.Millisecond)/max(1, rate*d.Seconds()), 100*busy, &ph)
	return rate, note, nil
}

func runWarmConnect(ctx context.Context, e *env, r *runCtx) (*result, error) {
	const fig, conns = "warm connects/s (live key)", 32
	lb, err := e.liveBackend(ctx)
	if err != nil {
		return nil, err
	}
	d := size(&e.cfg, 5*time.Second, time.Second)
	// What an application server sends on every page load: the key and
	// the spawn config, in case the backend is not live.
	body, _ := json.Marshal(api.ConnectRequest{Key: "bench", Spawn: e.spawnConfig(3600), User: "bench"})
	host, _, _ := splitURL(e.berth.API)
	auth := "Bearer " + e.berth.apiKey
	if !e.cfg.Quick {
		if _, err := e.load(ctx, host, "/v1/connect", conns, time.Second, auth, body); err != nil {
			return nil, err
		}
	}
	r.cpuProfile(e, "warm-connect", d-time.Second)
	m := meterCPU(e.berth.PID)
	lr, err := e.load(ctx, host, "/v1/connect", conns, d, auth, body)
	used, busy := m.stop()
	if err != nil {
		return nil, err
	}
	if lr.Requests == 0 {
		return nil, fmt.Errorf("no successful connects (%d non-2xx, %d errors)", lr.Non2xx, lr.Errors)
	}
	// Every connect must have found the live backend, not spawned.
	check, err := e.api.Connect(ctx, api.ConnectRequest{Key: "bench", Spawn: e.spawnConfig(3600), User: "bench"})
	if err != nil {
		return nil, err
	}
	if check.Spawned || check.BackendID != lb.id {
		return nil, fmt.Errorf("the bench key was respawned during the warm connects (%s, was %s)", check.BackendID, lb.id)
	}
	res := newResult()
	res.values[fig] = RunFigure{Berth: lr.Requests}
	res.notes[fig] = fmt.Sprintf("Berth CPU per connect %.1f µs; machine CPU busy %.0f%%; %d non-2xx, %d socket errors",
		us(time.Duration(float64(used)/(lr.Requests*d.Seconds()))), 100*busy, lr.Non2xx, lr.Errors)
	return res, nil
}

func runIdleWS(ctx context.Context, e *env, r *runCtx) (*result, error) {
	const fig, figRSS, figHeap = "Berth memory per idle WebSocket", "  of which RSS growth", "  of which Go heap+stacks growth"
	lb, err := e.liveBackend(ctx)
	if err != nil {
		return nil, err
	}
	n := e.cfg.idleConns()
	limited := ""
	// Berth holds two descriptors per proxied WebSocket (client and
	// backend side), and needs some for itself.
	if most := (e.nofile - 512) / 2; n > most {
		limited = fmt.Sprintf("only %d of %d WebSockets: the open-files limit is %d (a proxied WebSocket takes at least two descriptors in Berth); ", most, n, e.nofile)
		n = most
	}
	path := lb.prefix + "/ws"
	msg := []byte("ping")
	// open opens k WebSockets, 64 at a time. On a failure it stops and
	// returns the ones that opened, in order, with the first error.
	open := func(k int) ([]*benchbackend.WSConn, error) {
		conns := make([]*benchbackend.WSConn, k)
		var (
			wg      sync.WaitGroup
			next    atomic.Int64
			errOnce sync.Once
			first   error
			failed  atomic.Bool
		)
		for range min(64, k) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for !failed.Load() {
					i := int(next.Add(1)) - 1
					if i >= k {
						return
					}
					ws, err := dialWS(lb.proxy, path)
					if err == nil {
						// One echo proves the connection reaches the backend.
						if err = ws.Echo(msg); err != nil {
							ws.Close()
						}
					}
					if err != nil {
						errOnce.Do(func() { first = fmt.Errorf("WebSocket %d: %w", i+1, err) })
						failed.Store(true)
						return
					}
					conns[i] = ws
				}
			}()
		}
		wg.Wait()
		opened := conns[:0]
		for _, c := range conns {
			if c != nil {
				opened = append(opened, c)
			}
		}
		return opened, first
	}
	// Warm up the paths (pools, the first goroutines) before the baseline.
	warm, err := open(64)
	closeAll(warm)
	if err != nil {
		return nil, err
	}
	time.Sleep(200 * time.Millisecond)

	before, rss0, err := e.memory(ctx)
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	conns, openErr := open(n)
	defer closeAll(conns)
	opened := time.Since(t0)
	if openErr != nil {
		// Berth could not hold them all: a miss, whatever the memory.
		if len(conns) < 100 {
			return nil, openErr
		}
		limited += fmt.Sprintf("Berth held only %d of %d WebSockets (%s), measured with those; ", len(conns), n, oneLine(openErr.Error()))
		n = len(conns)
	}
	time.Sleep(size(&e.cfg, 2*time.Second, 200*time.Millisecond))
	after, rss1, err := e.memory(ctx)
	if err != nil {
		return nil, err
	}
	r.heapProfile(e, "idle-ws")
	// They are still open and still echo.
	for range 10 {
		if err := conns[rand.IntN(len(conns))].Echo(msg); err != nil {
			return nil, fmt.Errorf("an idle WebSocket stopped echoing: %w", err)
		}
	}
	heap0, heap1 := before.HeapInuse+before.StackInuse, after.HeapInuse+after.StackInuse
	res := newResult()
	perRSS := (float64(rss1) - float64(rss0)) / float64(n) / 1024
	perHeap := (float64(heap1) - float64(heap0)) / float64(n) / 1024
	res.values[fig] = RunFigure{Berth: max(perRSS, perHeap)}
	if openErr != nil {
		res.missed[fig] = fmt.Sprintf("held only %d WebSockets", n)
	}
	res.values[figRSS] = RunFigure{Berth: perRSS}
	res.values[figHeap] = RunFigure{Berth: perHeap}
	res.notes[fig] = limited + fmt.Sprintf("%d WebSockets opened in %s; Berth RSS %.1f → %.1f MiB, Go heap+stacks %.1f → %.1f MiB, goroutines %d → %d (%.1f each)",
		n, opened.Round(time.Millisecond), mib(rss0), mib(rss1), mib(heap0), mib(heap1), before.Goroutines, after.Goroutines, float64(after.Goroutines-before.Goroutines)/float64(n))
	return res, nil
}

func tailString(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

func closeAll(conns []*benchbackend.WSConn) {
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
}

// memory reads the server's Go statistics after a collection that returns
// freed memory to the OS, then its RSS.
func (e *env) memory(ctx context.Context) (MemStats, uint64, error) {
	ms, err := e.memStats(ctx, true)
	if err != nil {
		return ms, 0, err
	}
	rss, err := e.berth.rss()
	return ms, rss, err
}

// phases is where a cold start's time went, from Berth's own event
// timestamps (same machine, same clock as the client's).
type phases struct {
	toScheduled, toStarting, toReady, toClient []time.Duration
}

// add records one backend's phases: client send at t0, client saw it ready
// (a 200, or the connect answer) at t1.
func (e *env) addPhases(ctx context.Context, p *phases, id string, t0, t1 time.Time) error {
	return e.addPhasesVia(ctx, e.api, p, id, t0, t1)
}

// addPhasesVia is addPhases with the events of the Berth c reaches.
func (e *env) addPhasesVia(ctx context.Context, c *api.Client, p *phases, id string, t0, t1 time.Time) error {
	at := map[berth.State]time.Time{}
	err := c.Events(ctx, id, func(ev api.StateEvent) error {
		t, err := time.Parse(time.RFC3339Nano, ev.At)
		if err != nil {
			return fmt.Errorf("event time %q: %w", ev.At, err)
		}
		if _, seen := at[ev.State]; !seen {
			at[ev.State] = t
		}
		return nil
	})
	if err != nil {
		return err
	}
	s, st, r := at[berth.StateScheduled], at[berth.StateStarting], at[berth.StateReady]
	if s.IsZero() || st.IsZero() || r.IsZero() {
		return fmt.Errorf("backend %s has no scheduled, starting or ready event", id)
	}
	p.toScheduled = append(p.toScheduled, s.Sub(t0))
	p.toStarting = append(p.toStarting, st.Sub(s))
	p.toReady = append(p.toReady, r.Sub(st))
	p.toClient = append(p.toClient, t1.Sub(r))
	return nil
}

func (p *phases) String() string {
	if len(p.toReady) == 0 {
		return ""
	}
	ms := func(ds []time.Duration) string {
		s := durationsIn(ds, time.Millisecond)
		return fmt.Sprintf("%.2f (%.2f)", percentile(s, 50), percentile(s, 90))
	}
	return fmt.Sprintf("Berth's phases in ms, p50 (p90) of %d: connect → recorded %s, → starting (state hook, start begins) %s, starting → ready (runtime start, exec, readiness poll) %s, ready → client saw it %s",
		len(p.toReady), ms(p.toScheduled), ms(p.toStarting), ms(p.toReady), ms(p.toClient))
}
