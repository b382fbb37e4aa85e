package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/url"
	"runtime"
	"sync"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
	"github.com/jackc/pgx/v5"
)

// The replica scenarios run Berth as replicas sharing one PostgreSQL
// database (Config.Postgres), in a schema of their own that the bench
// drops when it ends.
func init() {
	scenarios = append(scenarios,
		&scenario{
			name:    "replica-cold",
			summary: "connect → ready with the PostgreSQL store (a replica), vs the same with SQLite",
			figures: []figureSpec{
				{name: "connect → ready, PostgreSQL store, p50", unit: "ms", baseline: "SQLite", target: target{ratioAtMost, 1.3},
					method: "as the cold-process row, on a replica whose store is PostgreSQL (on loopback) and on the bench's SQLite Berth, alternating, 15 samples each per run (after 2 discarded)"},
			},
			skip: skipNoPostgres,
			run:  runReplicaCold,
		},
		&scenario{
			name:    "replica-warm-connect",
			summary: "warm connects/s through 3 replicas at once, vs through one",
			figures: []figureSpec{
				{name: "warm connects/s, 3 replicas", unit: "/s", baseline: "1 replica", target: target{ratioAtLeast, 2},
					method: "POST /v1/connect for a key whose backend runs on replica 1, with the spawn config: 30 keep-alive connections to replica 1 alone for 5 s, then 10 to each of the 3 replicas at once for 5 s (one wrk each); the other replicas answer from the holder the store's feed keeps fresh. All three share this machine's processors with PostgreSQL and the load generators"},
			},
			skip: skipNoPostgres,
			run:  runReplicaWarmConnect,
		},
		&scenario{
			name:    "replica-hop-latency",
			summary: "added latency through the proxy of a replica that does not run the backend, vs through the one that does",
			figures: []figureSpec{
				{name: "added latency via another replica, p50", unit: "µs", baseline: "via its own replica", target: target{ratioAtMost, 2},
					method: "20,000 sequential GETs on one keep-alive connection each: through replica 2's proxy (which forwards to replica 1's), through replica 1's proxy, and straight to the backend on replica 1, in alternating blocks of 500; each figure is the p50 less the direct p50"},
			},
			skip: skipNoPostgres,
			run:  runReplicaHop,
		},
	)
}

func skipNoPostgres(ctx context.Context, e *env) string {
	if e.cfg.Postgres == "" {
		return "no PostgreSQL given (--postgres URL, or BERTH_BENCH_POSTGRES)"
	}
	return ""
}

// replicas returns n replicas sharing a fresh schema, starting them on
// first use; the bench stops them when it ends.
func (e *env) replicaSet(ctx context.Context, n int) ([]*berthServer, []*api.Client, error) {
	e.repMu.Lock()
	defer e.repMu.Unlock()
	if e.repSchema == "" {
		u, schema, err := newSchema(ctx, e.cfg.Postgres)
		if err != nil {
			return nil, nil, err
		}
		e.repStore, e.repSchema = u, schema
		key := make([]byte, 16)
		rand.Read(key)
		e.repAPIKey = hex.EncodeToString(key)
		tok := make([]byte, 32)
		rand.Read(tok)
		e.repTokenKey = hex.EncodeToString(tok)
	}
	for len(e.replicas) < n {
		name := fmt.Sprintf("replica-%d", len(e.replicas)+1)
		b, err := e.startServer(ctx, name, e.repAPIKey, "--store", e.repStore, "--token-key", e.repTokenKey, "--node-id", name,
			"--runtime", "process")
		if err != nil {
			return nil, nil, err
		}
		e.replicas = append(e.replicas, b)
		e.repClients = append(e.repClients, api.NewClient(b.API, b.apiKey, e.hc))
		e.log("%s is up (pid %d; log %s)", name, b.PID, b.logPath)
	}
	return e.replicas[:n], e.repClients[:n], nil
}

func (e *env) stopReplicas() {
	for _, b := range e.replicas {
		if err := b.stop(); err != nil {
			e.log("stop replica: %v", err)
		}
	}
	if e.repSchema != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := execSQL(ctx, e.cfg.Postgres, "DROP SCHEMA "+e.repSchema+" CASCADE"); err != nil {
			e.log("drop schema %s: %v", e.repSchema, err)
		}
	}
}

// newSchema makes a schema for the replicas and returns the URL that
// puts them in it.
func newSchema(ctx context.Context, raw string) (string, string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", "", fmt.Errorf("--postgres: %w", err)
	}
	b := make([]byte, 4)
	rand.Read(b)
	schema := "berth_bench_" + hex.EncodeToString(b)
	if err := execSQL(ctx, raw, "CREATE SCHEMA "+schema); err != nil {
		return "", "", err
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String(), schema, nil
}

func execSQL(ctx context.Context, dsn, sql string) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql)
	return err
}

func runReplicaCold(ctx context.Context, e *env, r *runCtx) (*result, error) {
	_, clients, err := e.replicaSet(ctx, 1)
	if err != nil {
		return nil, err
	}
	n, warm := size(&e.cfg, 15, 3), size(&e.cfg, 2, 1)
	spawn := e.spawnConfig(60)
	b, x, err := coldPair(ctx, n, warm,
		func(i int) (time.Duration, error) {
			return e.coldVia(ctx, clients[0], fmt.Sprintf("pgcold-%d-%d", r.n, i), spawn, nil)
		},
		func(i int) (time.Duration, error) {
			return e.coldVia(ctx, e.api, fmt.Sprintf("sqlcold-%d-%d", r.n, i), spawn, nil)
		})
	if err != nil {
		return nil, err
	}
	return coldResult("connect → ready, PostgreSQL store, p50", b, x, nil), nil
}

func runReplicaWarmConnect(ctx context.Context, e *env, r *runCtx) (*result, error) {
	const fig, conns = "warm connects/s, 3 replicas", 30
	reps, clients, err := e.replicaSet(ctx, 3)
	if err != nil {
		return nil, err
	}
	req := api.ConnectRequest{Key: "bench-warm", Spawn: e.spawnConfig(3600), User: "bench"}
	if _, err := clients[0].Connect(ctx, api.ConnectRequest{Key: req.Key, Spawn: req.Spawn, User: "bench", Wait: true}); err != nil {
		return nil, err
	}
	for _, c := range clients[1:] { // each learns the holder once
		if _, err := c.Connect(ctx, req); err != nil {
			return nil, err
		}
	}
	body, _ := json.Marshal(req)
	auth := "Bearer " + e.repAPIKey
	d := size(&e.cfg, 5*time.Second, time.Second)
	// What the database did meanwhile: its transactions, counted by
	// PostgreSQL itself (renewals and expiry scans included), to tell
	// whether a warm connect on a replica touches it.
	xacts := func() (int64, error) {
		conn, err := pgx.Connect(ctx, e.cfg.Postgres)
		if err != nil {
			return 0, fmt.Errorf("connect to PostgreSQL: %w", err)
		}
		defer conn.Close(ctx)
		// PostgreSQL's sessions report their counts when idle, up to
		// seconds late: an order of magnitude, which is what it tells.
		var n int64
		err = conn.QueryRow(ctx, "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()").Scan(&n)
		return n, err
	}
	type phase struct {
		rate, busy float64
		cpu        time.Duration // the replicas' own CPU
		xacts      int64         // PostgreSQL's transactions
	}
	load := func(bs []*berthServer, per int) (phase, error) {
		x0, err := xacts()
		if err != nil {
			return phase{}, err
		}
		pids := make([]int, len(bs))
		for i, b := range bs {
			pids[i] = b.PID
		}
		m := meterCPU(pids...)
		var mu sync.Mutex
		var total float64
		var firstErr error
		var wg sync.WaitGroup
		for _, b := range bs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				host, _, _ := splitURL(b.API)
				lr, err := e.load(ctx, host, "/v1/connect", per, d, auth, body)
				mu.Lock()
				defer mu.Unlock()
				if err == nil && lr.Requests == 0 {
					err = fmt.Errorf("%s: no successful connects (%d non-2xx, %d errors)", host, lr.Non2xx, lr.Errors)
				}
				if err != nil && firstErr == nil {
					firstErr = err
				}
				total += lr.Requests
			}()
		}
		wg.Wait()
		used, busy := m.stop()
		if firstErr != nil {
			return phase{}, firstErr
		}
		x1, err := xacts()
		return phase{rate: total, busy: busy, cpu: used, xacts: x1 - x0}, err
	}
	p1, err := load(reps[:1], conns)
	if err != nil {
		return nil, err
	}
	p3, err := load(reps, conns/3)
	if err != nil {
		return nil, err
	}
	// Every connect must have found the live backend, not spawned.
	for _, c := range clients {
		check, err := c.Connect(ctx, req)
		if err != nil {
			return nil, err
		}
		if check.Spawned {
			return nil, fmt.Errorf("a warm connect spawned a backend: the key was not held")
		}
	}
	res := newResult()
	res.values[fig] = RunFigure{Berth: p3.rate, Baseline: p1.rate}
	perConnect := func(p phase) float64 { return float64(p.cpu.Microseconds()) / (p.rate * d.Seconds()) }
	res.notes[fig] = fmt.Sprintf("machine CPU busy %.0f%% with one replica, %.0f%% with three: on %d processors the replicas, PostgreSQL and the load generators share the same cores, so three replicas add no processor. "+
		"Replica CPU per warm connect %.0f µs with one, %.0f µs with three; PostgreSQL transactions in the database during the load %d with one, %d with three, for %.0f and %.0f connects (an upper bound: renewals, expiry scans and node reads, and any other client of that database, are in it; connects answer from memory)",
		p1.busy*100, p3.busy*100, runtime.NumCPU(), perConnect(p1), perConnect(p3), p1.xacts, p3.xacts, p1.rate*d.Seconds(), p3.rate*d.Seconds())
	return res, nil
}

func runReplicaHop(ctx context.Context, e *env, r *runCtx) (*result, error) {
	reps, clients, err := e.replicaSet(ctx, 2)
	if err != nil {
		return nil, err
	}
	res0, err := clients[0].Connect(ctx, api.ConnectRequest{Key: "bench-hop", Spawn: e.spawnConfig(3600), User: liveUser, Wait: true})
	if err != nil {
		return nil, err
	}
	if res0.State != berth.StateReady {
		return nil, fmt.Errorf("the hop backend is %s (%s)", res0.State, res0.Reason)
	}
	port, err := e.ask(ctx, res0.URL+"port")
	if err != nil {
		return nil, fmt.Errorf("ask the backend its port: %w", err)
	}
	direct := "127.0.0.1:" + port
	own, _, _ := splitURL(reps[0].Proxy)
	other, _, _ := splitURL(reps[1].Proxy)
	prefix := "/" + res0.Token
	n, block, warm := size(&e.cfg, 20000, 300), size(&e.cfg, 500, 100), size(&e.cfg, 1000, 50)
	viaOther := newRawClient(other, getRequest(other, prefix+"/"))
	viaOwn := newRawClient(own, getRequest(own, prefix+"/"))
	straight := newRawClient(direct, getRequest(direct, "/"))
	defer viaOther.Close()
	defer viaOwn.Close()
	defer straight.Close()
	samples, err := sequential(n, block, warm, timed(viaOther), timed(viaOwn), timed(straight))
	if err != nil {
		return nil, err
	}
	o, w, d := durationsIn(samples[0], time.Microsecond), durationsIn(samples[1], time.Microsecond), durationsIn(samples[2], time.Microsecond)
	const fig = "added latency via another replica, p50"
	res := newResult()
	res.values[fig] = RunFigure{Berth: percentile(o, 50) - percentile(d, 50), Baseline: percentile(w, 50) - percentile(d, 50)}
	res.notes[fig] = fmt.Sprintf("p50 via another replica %.0f µs, via its own %.0f µs, direct %.0f µs; p99 %.0f / %.0f / %.0f µs",
		percentile(o, 50), percentile(w, 50), percentile(d, 50), percentile(o, 99), percentile(w, 99), percentile(d, 99))
	return res, nil
}
