package chaos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
)

// params are one runtime's knobs. Every one is logged, so a report says
// what produced it.
type params struct {
	runtime    string
	iterations int
	// workers is how many goroutines send connects back to back while
	// berth is killed; each waits for its answer before the next.
	workers int
	// keys bounds the distinct keys of an iteration; newKey is the chance
	// that a connect names a key not used yet (while any are left), else
	// it repeats a used one.
	keys   int
	newKey float64
	// waitShare is the share of connects that wait for ready.
	waitShare float64
	// readyDelay is the backend's TB_READY_DELAY_MS: a slow start keeps
	// many backends between spawn and ready when berth dies.
	readyDelay time.Duration
	// killWithin: berth is SIGKILLed at a uniformly random moment in
	// [0, killWithin) after the connects begin.
	killWithin time.Duration
}

// The defaults are what CI runs; -chaos.n changes only the iterations.
// Every iteration kills berth within the first second, while its spawns are
// in flight. The docker variant has far fewer keys: this machine's Docker
// Engine takes about a second per container, one after another, and an
// iteration waits for every key's container to start again after the
// restart (and for the 5 s start settle of the starts the kill cut short),
// so five keys make an iteration take ~11 s: 30 of them ~5.5 min alone.
var (
	processParams = params{runtime: "process", iterations: 30, workers: 48, keys: 200,
		newKey: 0.6, waitShare: 0.25, readyDelay: 300 * time.Millisecond, killWithin: time.Second}
	dockerParams = params{runtime: "docker", iterations: 30, workers: 8, keys: 5,
		newKey: 0.6, waitShare: 0.25, readyDelay: 300 * time.Millisecond, killWithin: time.Second}
)

// TestServe_SIGKILLWhileSpawning: berth serve, killed with SIGKILL while
// connects spawn slow-starting backends and restarted on the same data dir,
// leaves no backend running that its records do not own, never lets two
// live backends hold one key, and tells the truth in every record; every
// key then connects to exactly one backend with a higher fencing token,
// and a graceful stop leaves nothing running.
func TestServe_SIGKILLWhileSpawning(t *testing.T) {
	seed := *flagSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (rerun the same kill moments and key choices with -chaos.seed=%d)", seed, seed)
	for ri, p := range []params{processParams, dockerParams} {
		t.Run(p.runtime, func(t *testing.T) {
			t.Parallel()
			if *flagN > 0 {
				p.iterations = *flagN
			}
			var img string
			if p.runtime == "docker" {
				img = needDocker(t)
			}
			runChaos(t, p, seed, uint64(ri), img)
		})
	}
}

func runChaos(t *testing.T, p params, seed, stream uint64, img string) {
	t.Logf("%s runtime: %d iterations; %d goroutines connecting, up to %d keys (%.0f%% new, %.0f%% waiting for ready); backend ready %v after start; SIGKILL within %v of the first connect",
		p.runtime, p.iterations, p.workers, p.keys, p.newKey*100, p.waitShare*100, p.readyDelay, p.killWithin)
	var total stats
	failed := 0
	began := time.Now()
	for i := range p.iterations {
		st := &stats{}
		itBegan := time.Now()
		ok := t.Run(fmt.Sprintf("%02d", i), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, stream<<32|uint64(i)))
			newIteration(t, p, i, rng, img, st).run()
		})
		if !ok {
			failed++
		}
		t.Logf("iteration %02d (%s, %v): %s", i, map[bool]string{true: "ok", false: "FAILED"}[ok], time.Since(itBegan).Round(100*time.Millisecond), st)
		total.add(st)
	}
	t.Logf("%s total, %d iterations (%d failed) in %v: %s", p.runtime, p.iterations, failed, time.Since(began).Round(time.Second), &total)
}

// stats is what one iteration (or all of them) saw.
type stats struct {
	killAt                            time.Duration
	connects, answered, spawned, errs int // connects sent, answered, answered with spawned, failed before the kill
	runningAtKill                     int // backends running right after the kill
	records, live, lost, neverStarted int // after the restart; neverStarted: lost with no instance found (its start was never recorded)
	otherTerminated                   int
	orphans                           int // running with no live record
	doubles                           int // keys with two live backends at once
	violations                        int // VIOLATION lines the backends wrote
	untruthful                        int // records that said something untrue
	reconnected, respawned, badKeys   int // keys connected again; of them spawned anew; failing a check
	started                           int // backends that ran (a start line in the audit) by the audit after the restart
	leftAfterStop                     int // processes or containers left after the graceful stop
	iterations                        int
	phases                            []string // how long each took (one iteration)
}

func (s *stats) add(o *stats) {
	s.connects += o.connects
	s.answered += o.answered
	s.spawned += o.spawned
	s.errs += o.errs
	s.runningAtKill += o.runningAtKill
	s.records += o.records
	s.live += o.live
	s.lost += o.lost
	s.neverStarted += o.neverStarted
	s.otherTerminated += o.otherTerminated
	s.orphans += o.orphans
	s.doubles += o.doubles
	s.violations += o.violations
	s.untruthful += o.untruthful
	s.reconnected += o.reconnected
	s.respawned += o.respawned
	s.badKeys += o.badKeys
	s.leftAfterStop += o.leftAfterStop
	s.started += o.started
	s.iterations++
}

func (s *stats) String() string {
	kill, phases := "", ""
	if len(s.phases) > 0 {
		phases = " (" + strings.Join(s.phases, ", ") + ")"
	}
	if s.iterations == 0 {
		kill = fmt.Sprintf("kill at %v; ", s.killAt.Round(time.Millisecond))
	}
	return fmt.Sprintf("%sconnects %d sent, %d answered (%d spawned), %d failed before the kill; %d backends running at the kill; "+
		"after restart %d records (%d backends ever ran): %d live, %d lost (%d with no instance found), %d other terminated; "+
		"orphans %d, double holders %d (VIOLATION lines %d), untruthful records %d; "+
		"reconnected %d keys (%d spawned anew, %d failing a check); left after graceful stop %d%s",
		kill, s.connects, s.answered, s.spawned, s.errs, s.runningAtKill,
		s.records, s.started, s.live, s.lost, s.neverStarted, s.otherTerminated,
		s.orphans, s.doubles, s.violations, s.untruthful,
		s.reconnected, s.respawned, s.badKeys, s.leftAfterStop, phases)
}

// iteration is one start, kill, restart, audit, reconnect and stop.
type iteration struct {
	t     *testing.T
	p     params
	i     int
	rng   *rand.Rand
	st    *stats
	dir   string
	cfg   berthConfig
	spawn *berth.SpawnConfig
	// marker is markerEnv's value for this iteration's backends;
	// instance the docker label of its Berth.
	marker, instance string
	// auditRoot holds the audit file(s) named auditName.
	auditRoot, auditName string

	mu      sync.Mutex
	berths  []*berthProc
	doubles map[string]bool // keys seen with two live backends
}

func newIteration(t *testing.T, p params, i int, rng *rand.Rand, img string, st *stats) *iteration {
	dir, err := os.MkdirTemp("", fmt.Sprintf("berth-chaos-%s-%02d-", p.runtime, i))
	if err != nil {
		t.Fatal(err)
	}
	// Docker bind-mounts directories under it into containers running
	// as nobody; the path must be reachable for them.
	os.Chmod(dir, 0o755)
	it := &iteration{
		t: t, p: p, i: i, rng: rng, st: st, dir: dir,
		marker:  fmt.Sprintf("%d-%s-%02d", os.Getpid(), p.runtime, i),
		doubles: map[string]bool{},
	}
	it.cfg = berthConfig{
		runtime: p.runtime,
		dataDir: filepath.Join(dir, "data"),
		apiKey:  "chaos-" + strconv.FormatUint(rng.Uint64(), 36),
		logPath: filepath.Join(dir, "berth.log"),
	}
	env := map[string]string{
		"TB_READY_DELAY_MS": strconv.Itoa(int(p.readyDelay / time.Millisecond)),
		markerEnv:           it.marker,
	}
	it.spawn = &berth.SpawnConfig{
		Env:            env,
		GraceSeconds:   new(2),
		MaxIdleSeconds: new(0), // never idle: nothing but the test stops a backend
	}
	switch p.runtime {
	case "process":
		// One audit file and one lock directory for every key.
		for _, d := range []string{it.cfg.dataDir, filepath.Join(dir, "locks")} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		it.auditRoot, it.auditName = dir, "audit.log"
		env["TB_AUDIT_FILE"] = filepath.Join(dir, "audit.log")
		env["TB_LOCK_DIR"] = filepath.Join(dir, "locks")
		it.spawn.Command = []string{bin.testbackend}
	case "docker":
		// The docker runtime mounts no directory but a backend's state
		// dir. State mode volume gives every key its own directory under
		// --volume-root, the same one for each of the key's backends, so
		// a per-key lock and audit file there catch two holders of a key
		// as surely as one shared directory would; the test reads every
		// key's audit file.
		it.cfg.volumeRoot = filepath.Join(dir, "volumes")
		if err := os.MkdirAll(it.cfg.dataDir, 0o755); err != nil {
			t.Fatal(err)
		}
		it.auditRoot, it.auditName = it.cfg.volumeRoot, "audit.log"
		env["TB_AUDIT_FILE"] = "${BERTH_STATE_DIR}/audit.log"
		env["TB_LOCK_DIR"] = "${BERTH_STATE_DIR}"
		it.spawn.Image = img
		it.spawn.PullPolicy = "never"
		it.spawn.State = berth.StateConfig{Mode: berth.StateModeVolume}
		it.instance = instanceLabel(it.cfg.dataDir)
		usedInstances.add(it.instance)
	}
	t.Cleanup(it.cleanup)
	return it
}

// cleanup kills whatever the iteration left, so one failure does not
// cascade into the next iteration.
func (it *iteration) cleanup() {
	it.mu.Lock()
	berths := it.berths
	it.mu.Unlock()
	for _, b := range berths {
		if err := b.kill(); err != nil {
			it.t.Error(err)
		}
	}
	if n := killMarked(it.marker); n > 0 {
		it.t.Logf("cleanup: killed %d leftover backend processes", n)
	}
	if it.instance != "" {
		if n := removeContainers(it.instance); n > 0 {
			it.t.Logf("cleanup: removed %d leftover containers", n)
		}
	}
	if *flagKeep && it.t.Failed() {
		it.t.Logf("kept %s (berth's output: berth.log; the backends': %s)", it.dir, it.auditName)
		return
	}
	os.RemoveAll(it.dir)
}

func (it *iteration) start() *berthProc {
	it.t.Helper()
	b := startBerth(it.t, it.cfg)
	it.mu.Lock()
	it.berths = append(it.berths, b)
	it.mu.Unlock()
	return b
}

func (it *iteration) run() {
	t := it.t
	defer func() { it.st.doubles = len(it.doubles) }()
	lap := time.Now()
	phase := func(name string) {
		it.st.phases = append(it.st.phases, fmt.Sprintf("%s %.1fs", name, time.Since(lap).Seconds()))
		lap = time.Now()
	}
	b1 := it.start()
	phase("start")
	keys := it.drive(b1)
	for _, in := range it.running(t.Context()) {
		if in.running {
			it.st.runningAtKill++
		}
	}
	phase("drive")

	b2 := it.start()
	phase("restart")
	recs := it.settle(b2)
	phase("settle")
	it.auditRestart(b2, recs)
	phase("audit")
	it.reconnect(b2, keys)
	phase("reconnect")
	it.stop(b2)
	phase("stop")
}

// key names the n-th key of the iteration, with the separators keys allow.
func (it *iteration) key(n int64) string {
	return fmt.Sprintf("doc/%02d:%03d@chaos", it.i, n)
}

// drive sends connects from many goroutines and SIGKILLs berth at a random
// moment among them. It returns every key a connect named.
func (it *iteration) drive(b *berthProc) map[string]bool {
	t, p := it.t, it.p
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	it.st.killAt = time.Duration(it.rng.Int64N(int64(p.killWithin)))

	var (
		mu      sync.Mutex
		used    = map[string]bool{}
		errs    []string
		next    atomic.Int64
		killed  atomic.Bool
		sent    atomic.Int64
		answers atomic.Int64
		spawned atomic.Int64
		wg      sync.WaitGroup
		begin   = make(chan struct{})
	)
	pick := func(r *rand.Rand) string {
		if n := next.Load(); n < int64(p.keys) && (n == 0 || r.Float64() < p.newKey) {
			if n = next.Add(1) - 1; n < int64(p.keys) {
				return it.key(n)
			}
		}
		return it.key(r.Int64N(min(next.Load(), int64(p.keys))))
	}
	for range p.workers {
		r := rand.New(rand.NewPCG(it.rng.Uint64(), it.rng.Uint64()))
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-begin
			// Only connects begun before the kill count: after it, each
			// fails at once and the loop ends.
			for ctx.Err() == nil && !killed.Load() {
				key := pick(r)
				wait := r.Float64() < p.waitShare
				mu.Lock()
				used[key] = true
				mu.Unlock()
				sent.Add(1)
				resp, err := b.Client.Connect(ctx, api.ConnectRequest{Key: key, Spawn: it.spawn, User: "chaos", Wait: wait, WaitTimeoutSeconds: 30})
				if err != nil {
					if !killed.Load() {
						mu.Lock()
						errs = append(errs, fmt.Sprintf("connect %s: %v", key, err))
						mu.Unlock()
					}
					continue
				}
				answers.Add(1)
				if resp.Spawned {
					spawned.Add(1)
				}
			}
		}()
	}
	close(begin)
	time.Sleep(it.st.killAt)
	killed.Store(true)
	if err := b.kill(); err != nil {
		t.Fatal(err)
	}
	cancel()
	wg.Wait()

	it.st.connects, it.st.answered, it.st.spawned = int(sent.Load()), int(answers.Load()), int(spawned.Load())
	it.st.errs = len(errs)
	for i, e := range errs {
		if i == 5 {
			t.Logf("… and %d more connect errors before the kill", len(errs)-5)
			break
		}
		t.Logf("before the kill: %s", e)
	}
	return used
}

// instance is one backend found running (or, for docker, whose container
// exists), by backend id.
type instance struct {
	id, key    string
	pids       []int
	containers []string // "id state"
	running    bool
}

func (in *instance) String() string {
	var parts []string
	if len(in.pids) > 0 {
		parts = append(parts, fmt.Sprintf("pids %v", in.pids))
	}
	if len(in.containers) > 0 {
		parts = append(parts, "container "+strings.Join(in.containers, ", "))
	}
	return fmt.Sprintf("backend %s (key %s; %s)", in.id, in.key, strings.Join(parts, "; "))
}

// running finds the iteration's backends: processes carrying its marker,
// and for docker its Berth's backend containers in any state.
func (it *iteration) running(ctx context.Context) map[string]*instance {
	out := map[string]*instance{}
	get := func(id, key string) *instance {
		in := out[id]
		if in == nil {
			in = &instance{id: id, key: key}
			out[id] = in
		}
		if in.key == "" {
			in.key = key
		}
		return in
	}
	for _, p := range markedProcs(it.marker) {
		in := get(p.backendID, p.key)
		in.pids = append(in.pids, p.pid)
		in.running = true
	}
	if it.instance != "" {
		cs, err := containers(ctx, it.instance)
		if err != nil {
			it.t.Errorf("list containers: %v", err)
		}
		for _, c := range cs {
			if c.sandbox {
				continue
			}
			in := get(c.backendID, c.key)
			in.containers = append(in.containers, c.id[:12]+" "+c.state)
			if c.state == "running" {
				in.running = true
			}
		}
	}
	return out
}

// settle waits until no record is between states (the restarted berth
// re-adopts some backends and records others lost, partly in the
// background) and returns every record.
func (it *iteration) settle(b *berthProc) []*berth.Backend {
	t := it.t
	deadline := time.Now().Add(healthTimeout)
	for {
		recs, err := listBackends(t.Context(), b)
		if err != nil {
			t.Fatalf("list backends after the restart: %v", err)
		}
		var pending []string
		for _, r := range recs {
			if r.State != berth.StateReady && r.State != berth.StateTerminated {
				pending = append(pending, r.ID+" "+string(r.State))
			}
		}
		if len(pending) == 0 {
			return recs
		}
		if time.Now().After(deadline) {
			t.Errorf("%d records still between states %v after the restart: %v", len(pending), healthTimeout, pending)
			return recs
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// listBackends lists every record, newest first.
func listBackends(ctx context.Context, b *berthProc) ([]*berth.Backend, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	return b.Client.Backends(ctx, "", "")
}

// lastMessage is the message of a terminated backend's last event, which
// says why it was recorded lost.
func lastMessage(ctx context.Context, b *berthProc, id string) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	msg := ""
	err := b.Client.Events(ctx, id, func(e api.StateEvent) error {
		if e.Message != "" {
			msg = e.Message
		}
		return nil
	})
	if err != nil && msg == "" {
		return fmt.Sprintf("(events: %v)", err)
	}
	return msg
}

// settleGrace is how long a check that finds a backend running where none
// should be looks again before it reports it. By Berth's contract nothing
// is in flight at these points (a terminated backend's processes are gone,
// a stopped Berth's backends too), so this is no timing threshold: a
// correct Berth passes with no grace at all, and a leftover stays however
// long the test would wait.
const settleGrace = time.Second

// findings collects the failures of one check, reported one by one up to
// a limit, then counted.
type findings struct {
	t    *testing.T
	what string
	n    int
}

const maxDetails = 8

func (f *findings) add(format string, args ...any) {
	f.t.Helper()
	f.n++
	if f.n <= maxDetails {
		f.t.Errorf("%s: %s", f.what, fmt.Sprintf(format, args...))
	}
}

func (f *findings) done() int {
	f.t.Helper()
	if f.n > maxDetails {
		f.t.Errorf("%s: %d in all (%d more not shown)", f.what, f.n, f.n-maxDetails)
	}
	return f.n
}

// auditRestart checks, right after the restart, that (a) nothing runs
// without a live record, (b) no key has two live backends, and (c) every
// record is true.
func (it *iteration) auditRestart(b *berthProc, recs []*berth.Backend) {
	t := it.t
	ctx := t.Context()
	byID := map[string]*berth.Backend{}
	for _, r := range recs {
		byID[r.ID] = r
		switch {
		case r.State.Live():
			it.st.live++
		case r.Reason == berth.ReasonLost:
			it.st.lost++
		default:
			it.st.otherTerminated++
		}
	}
	it.st.records = len(recs)
	// Why each lost one was lost, for the report.
	msgs := map[string]string{}
	for _, r := range recs {
		if r.State == berth.StateTerminated && r.Reason == berth.ReasonLost {
			msgs[r.ID] = lastMessage(ctx, b, r.ID)
			if strings.Contains(msgs[r.ID], "no instance of it runs") {
				it.st.neverStarted++
			}
		}
	}
	audit := it.readAudit()
	for _, ls := range audit.byBackend {
		if slices.ContainsFunc(ls, func(l auditLine) bool { return l.event == "start" }) {
			it.st.started++
		}
	}

	// (a) Orphans: a backend that runs although no live record owns it.
	// Nothing is starting or stopping now (a terminated backend is gone
	// by contract), so none should be there; the second of grace only
	// spares the test a claim about the exact moment a process is reaped.
	orphansOf := func(run map[string]*instance) []*instance {
		var out []*instance
		for _, in := range run {
			if r := byID[in.id]; in.running && (r == nil || !r.State.Live()) {
				out = append(out, in)
			}
		}
		return out
	}
	run := it.running(ctx)
	for deadline := time.Now().Add(settleGrace); len(orphansOf(run)) > 0 && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
		run = it.running(ctx)
	}
	orphans := &findings{t: t, what: "orphan (runs without a live record)"}
	for _, in := range sortedInstances(orphansOf(run)) {
		if r := byID[in.id]; r == nil {
			orphans.add("%s has no record at all", in)
		} else {
			orphans.add("%s runs, but its record says %s/%s (%s)", in, r.State, r.Reason, msgs[in.id])
		}
	}
	it.st.orphans = orphans.done()

	// (b) Two live backends of one key, as running now.
	it.checkOneHolder(run, nil)

	// (c) Records tell the truth.
	untrue := &findings{t: t, what: "untruthful record"}
	for _, r := range recs {
		in := run[r.ID]
		switch {
		case r.State == berth.StateReady:
			if in == nil || !in.running {
				untrue.add("backend %s (key %s) is recorded ready, but nothing of it runs", r.ID, r.Key)
			} else if !audit.has(r.ID, "ready") {
				untrue.add("backend %s (key %s) is recorded ready, but it never listened (no ready line in its audit)", r.ID, r.Key)
			}
		case r.State == berth.StateTerminated:
			// Running ones are orphans, above; a container kept is not
			// removed, which terminated promises.
			if in != nil && !in.running {
				untrue.add("backend %s (key %s) is recorded terminated/%s, but the runtime still keeps it: %s", r.ID, r.Key, r.Reason, in)
			}
			if !plausible(r, audit) {
				untrue.add("backend %s (key %s) is recorded terminated/%s (exit code %v), which nothing in this test causes", r.ID, r.Key, r.Reason, r.ExitCode)
			}
		default:
			untrue.add("backend %s (key %s) is still %s after the restart settled", r.ID, r.Key, r.State)
		}
	}
	it.st.untruthful = untrue.done()
}

// plausible reports whether a terminated record's reason fits what
// happened: nothing but the kill (and Berth's own recovery) ended a
// backend, and a backend that exited by itself said so in its audit.
func plausible(r *berth.Backend, audit *auditLog) bool {
	switch r.Reason {
	case berth.ReasonLost, berth.ReasonSpawnFailed:
		return true
	case berth.ReasonExited, berth.ReasonCrashed:
		return audit.has(r.ID, "exit")
	}
	return false
}

func sortedInstances(ins []*instance) []*instance {
	slices.SortFunc(ins, func(a, b *instance) int { return strings.Compare(a.key+a.id, b.key+b.id) })
	return ins
}

func (it *iteration) readAudit() *auditLog {
	lines, err := readAudit(it.auditRoot, it.auditName)
	if err != nil {
		it.t.Errorf("read the backends' audit: %v", err)
	}
	return newAuditLog(lines)
}

// checkOneHolder reports keys with more than one running backend; when
// want is set, also keys whose running backend is not want[key].
func (it *iteration) checkOneHolder(run map[string]*instance, want map[string]string) {
	byKey := map[string][]*instance{}
	for _, in := range run {
		if in.running {
			byKey[in.key] = append(byKey[in.key], in)
		}
	}
	f := &findings{t: it.t, what: "two live backends of one key"}
	for _, k := range sortedKeys(byKey) {
		ins := sortedInstances(byKey[k])
		if len(ins) > 1 {
			it.doubles[k] = true
			var s []string
			for _, in := range ins {
				s = append(s, in.String())
			}
			f.add("key %s: %s", k, strings.Join(s, " and "))
		}
	}
	f.done()
	if want == nil {
		return
	}
	g := &findings{t: it.t, what: "key not held by the backend its connect returned"}
	for _, k := range sortedKeys(want) {
		ins := byKey[k]
		if len(ins) != 1 || ins[0].id != want[k] {
			var s []string
			for _, in := range ins {
				s = append(s, in.String())
			}
			g.add("key %s: connect returned %s, running: [%s]", k, want[k], strings.Join(s, ", "))
		}
	}
	g.done()
}

// reconnectWait is how long a connect after the restart waits for ready:
// a backend of a lost key starts anew, and a Docker Engine starting a
// dozen containers at once on two cores takes its time.
const reconnectWait = 90 * time.Second

// reconnect connects every key again, twice at once, waiting for ready,
// and checks that each gets exactly one live backend, the newest holder by
// fencing token, which answers through the proxy as itself.
func (it *iteration) reconnect(b *berthProc, used map[string]bool) {
	t := it.t
	ctx := t.Context()
	keys := map[string]bool{}
	for k := range used {
		keys[k] = true
	}
	before, err := listBackends(ctx, b)
	if err != nil {
		t.Fatalf("list backends: %v", err)
	}
	for _, r := range before {
		if r.Key != "" {
			keys[r.Key] = true
		}
	}
	type result struct {
		resp [2]*api.ConnectResponse
		errs []string
	}
	results := map[string]*result{}
	for k := range keys {
		results[k] = &result{}
	}
	hc := &http.Client{Timeout: 30 * time.Second}
	work := make(chan string)
	var wg sync.WaitGroup
	for range min(16, it.p.workers) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range work {
				res := results[k]
				var mu sync.Mutex
				var pair sync.WaitGroup
				for j := range 2 {
					pair.Add(1)
					go func() {
						defer pair.Done()
						cctx, cancel := context.WithTimeout(ctx, 2*reconnectWait)
						defer cancel()
						resp, err := b.Client.Connect(cctx, api.ConnectRequest{Key: k, Spawn: it.spawn, User: "chaos", Wait: true, WaitTimeoutSeconds: int(reconnectWait / time.Second)})
						mu.Lock()
						defer mu.Unlock()
						if err != nil {
							res.errs = append(res.errs, err.Error())
							return
						}
						res.resp[j] = resp
					}()
				}
				pair.Wait()
				if res.resp[0] == nil {
					continue
				}
				if id, err := whoAnswers(ctx, hc, res.resp[0].URL); err != nil {
					res.errs = append(res.errs, "through the proxy: "+err.Error())
				} else if id != res.resp[0].BackendID {
					res.errs = append(res.errs, fmt.Sprintf("through the proxy, backend %s answered, not %s", id, res.resp[0].BackendID))
				}
			}
		}()
	}
	for _, k := range sortedKeys(keys) {
		work <- k
	}
	close(work)
	wg.Wait()

	after, err := listBackends(ctx, b)
	if err != nil {
		t.Fatalf("list backends: %v", err)
	}
	recsByKey := map[string][]*berth.Backend{}
	for _, r := range after {
		recsByKey[r.Key] = append(recsByKey[r.Key], r)
	}
	fences := it.readAudit().fences()
	holders := map[string]string{}
	bad := map[string]bool{}
	f := &findings{t: t, what: "reconnect"}
	for _, k := range sortedKeys(results) {
		res := results[k]
		it.st.reconnected++
		fail := func(format string, args ...any) {
			bad[k] = true
			f.add("key %s: %s", k, fmt.Sprintf(format, args...))
		}
		for _, e := range res.errs {
			fail("%s", e)
		}
		r0, r1 := res.resp[0], res.resp[1]
		if r0 == nil || r1 == nil {
			continue
		}
		if r0.Spawned || r1.Spawned {
			it.st.respawned++
		}
		if r0.BackendID != r1.BackendID {
			fail("two connects at once got two backends, %s and %s", r0.BackendID, r1.BackendID)
		}
		if r0.State != berth.StateReady || r1.State != berth.StateReady {
			fail("connects with wait answered %s/%s and %s/%s, want ready", r0.State, r0.Reason, r1.State, r1.Reason)
		}
		if r0.Spawned && r1.Spawned {
			fail("both connects say they spawned")
		}
		holders[k] = r0.BackendID
		var live []string
		for _, r := range recsByKey[k] {
			if r.State.Live() {
				live = append(live, r.ID+" "+string(r.State))
			}
			if r.ID != r0.BackendID && r.FencingToken >= r0.FencingToken {
				fail("holder %s has fencing token %d, but %s (%s/%s) has %d", r0.BackendID, r0.FencingToken, r.ID, r.State, r.Reason, r.FencingToken)
			}
		}
		if len(live) != 1 || !strings.HasPrefix(live[0], r0.BackendID+" ") {
			fail("live records %v, want exactly %s", live, r0.BackendID)
		}
		for id, fence := range fences[k] {
			if id != r0.BackendID && fence >= r0.FencingToken {
				fail("holder %s has fencing token %d, but backend %s started with %d", r0.BackendID, r0.FencingToken, id, fence)
			}
		}
	}
	f.done()

	// Exactly the holders run, one per key (see settleGrace).
	var run map[string]*instance
	for deadline := time.Now().Add(settleGrace); ; {
		run = it.running(ctx)
		if holdersOnly(run, holders) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	it.checkOneHolder(run, holders)
	for k, id := range holders {
		ins := 0
		for _, in := range run {
			if in.key == k && in.running {
				ins++
			}
		}
		if ins != 1 || run[id] == nil {
			bad[k] = true
		}
	}
	it.st.badKeys = len(bad)
}

// holdersOnly reports whether exactly holders run, one per key.
func holdersOnly(run map[string]*instance, holders map[string]string) bool {
	n := 0
	for _, in := range run {
		if !in.running {
			continue
		}
		if holders[in.key] != in.id {
			return false
		}
		n++
	}
	return n == len(holders)
}

// whoAnswers GETs a backend's URL through the proxy and returns the
// BERTH_BACKEND_ID of whatever answered (testbackend's GET / is its
// environment).
func whoAnswers(ctx context.Context, hc *http.Client, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%d %s", resp.StatusCode, body)
	}
	var env map[string]string
	if err := json.Unmarshal(body, &env); err != nil {
		return "", fmt.Errorf("GET / answered %q: %w", body, err)
	}
	return env["BERTH_BACKEND_ID"], nil
}

// stop stops berth gracefully and checks that it exits 0 and leaves
// nothing running; then it reports what the backends' audit recorded.
func (it *iteration) stop(b *berthProc) {
	t := it.t
	if err := b.stop(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Errorf("berth exited with %v after SIGTERM, want exit status 0\n%s", err, tailFile(it.cfg.logPath, 20))
		} else {
			t.Errorf("graceful stop: %v", err)
		}
	}
	// Berth returns once its backends are stopped (see settleGrace).
	ctx := context.Background()
	var run map[string]*instance
	var sandboxes []string
	for deadline := time.Now().Add(settleGrace); ; {
		run = it.running(ctx)
		sandboxes = sandboxes[:0]
		if it.instance != "" {
			cs, _ := containers(ctx, it.instance)
			for _, c := range cs {
				if c.sandbox {
					sandboxes = append(sandboxes, c.id[:12]+" "+c.state)
				}
			}
		}
		if (len(run) == 0 && len(sandboxes) == 0) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	left := &findings{t: t, what: "left after berth's graceful stop (processes, or containers in any state)"}
	for _, in := range sortedInstances(slices.Collect(maps.Values(run))) {
		left.add("%s", in)
	}
	for _, s := range sandboxes {
		left.add("network sandbox %s", s)
	}
	it.st.leftAfterStop = left.done()

	audit := it.readAudit()
	v := &findings{t: t, what: "VIOLATION (a backend started while another live one held its key)"}
	for _, l := range audit.violations {
		it.doubles[l.key] = true
		v.add("key %s: backend %s (fence %d, pid %d) found the key's lock held by %s", l.key, l.backend, l.fence, l.pid, l.attrs["holder"])
	}
	it.st.violations = v.done()
}
