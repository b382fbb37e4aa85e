package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/berthhq/berth/api"
)

func init() {
	scenarios = append(scenarios, &scenario{
		name:    "pool-connect",
		summary: "connect → first 200 for a new key claimed from a warm pool, vs a warm connect to a live key; the backend takes 1 s to start",
		figures: []figureSpec{
			{name: "pool claim connect → first 200, p50", unit: "ms", baseline: "warm connect", target: target{ratioAtMost, 1.2},
				method: "a pool (min_ready 2) of the bench backend with BENCH_STARTUP_DELAY_MS=1000. Berth: POST /v1/connect {key: new, pool} (wait=false), then GET the URL through the proxy until a 200; the backend is then hard-terminated and the next sample waits (untimed) until the pool has one ready again. Baseline: POST /v1/connect for a live key of the same template, then the same GET. Same client and polling as the cold rows, alternating, 15 samples each (after 2 discarded)"},
			{name: "cold connect → first 200, same backend, p50", unit: "ms", baseline: "pool claim",
				method: "for scale: POST /v1/connect for a new key with the template's spawn and no pool (Berth matches a pool by its template, so the pool is deleted first), then the same GET; 3 samples"},
		},
		run: runPoolConnect,
	})
}

// poolStartupDelay is the bench backend's start in pool-connect: a backend
// whose cold start a pool is worth hiding.
const poolStartupDelay = "1000"

func runPoolConnect(ctx context.Context, e *env, r *runCtx) (*result, error) {
	const fig, coldFig = "pool claim connect → first 200, p50", "cold connect → first 200, same backend, p50"
	n, warm := size(&e.cfg, 15, 3), size(&e.cfg, 2, 1)
	spawn := e.spawnConfig(3600)
	spawn.Env = map[string]string{"BENCH_STARTUP_DELAY_MS": poolStartupDelay}
	name := fmt.Sprintf("bench-%d", r.n)
	if _, err := e.api.PutPool(ctx, name, api.PoolRequest{Spawn: spawn, MinReady: 2}); err != nil {
		return nil, fmt.Errorf("put pool: %w", err)
	}
	defer e.api.DeletePool(context.WithoutCancel(ctx), name)
	live, err := e.api.Connect(ctx, api.ConnectRequest{Key: name + "-live", Spawn: spawn, User: "bench", Wait: true})
	if err != nil {
		return nil, fmt.Errorf("connect the live key: %w", err)
	}
	defer e.terminate(context.WithoutCancel(ctx), live.BackendID)

	waitReady := func() error {
		deadline := time.Now().Add(60 * time.Second)
		for {
			p, err := e.api.Pool(ctx, name)
			if err != nil {
				return err
			}
			if p.Ready > 0 {
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("pool %s has no ready backend after 60 s", name)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// firstOK is connect → first 200 of req's URL.
	firstOK := func(req api.ConnectRequest) (time.Duration, *api.ConnectResponse, error) {
		start := time.Now()
		res, err := e.api.Connect(ctx, req)
		if err != nil {
			return 0, nil, fmt.Errorf("connect: %w", err)
		}
		host, path, err := splitURL(res.URL)
		if err != nil {
			return 0, nil, err
		}
		err = pollUntil200(ctx, host, path, 60*time.Second, nil)
		return time.Since(start), res, err
	}
	b, x, err := coldPair(ctx, n, warm,
		func(i int) (time.Duration, error) {
			if err := waitReady(); err != nil {
				return 0, err
			}
			d, res, err := firstOK(api.ConnectRequest{Key: fmt.Sprintf("%s-%d", name, i), Pool: name, User: "bench"})
			if err == nil && res.Pool != name {
				err = fmt.Errorf("connect %d was not served from the pool (backend %s): it was a cold spawn", i, res.BackendID)
			}
			if res != nil {
				if terr := e.terminate(ctx, res.BackendID); err == nil {
					err = terr
				}
			}
			return d, err
		},
		func(int) (time.Duration, error) {
			d, res, err := firstOK(api.ConnectRequest{Key: name + "-live", Spawn: spawn, User: "bench"})
			if err == nil && res.BackendID != live.BackendID {
				err = fmt.Errorf("the live key was respawned (%s, was %s)", res.BackendID, live.BackendID)
			}
			return d, err
		})
	if err != nil {
		return nil, err
	}
	res := newResult()
	bs, xs := durationsIn(b, time.Millisecond), durationsIn(x, time.Millisecond)
	res.values[fig] = RunFigure{Berth: percentile(bs, 50), Baseline: percentile(xs, 50)}
	res.notes[fig] = fmt.Sprintf("p90 claim %.3f ms, warm %.3f ms; min %.3f / %.3f ms", percentile(bs, 90), percentile(xs, 90), bs[0], xs[0])

	// For scale: the cold start the pool hides.
	if err := e.api.DeletePool(ctx, name); err != nil {
		return nil, err
	}
	var colds []time.Duration
	for i := range size(&e.cfg, 3, 1) {
		d, cres, err := firstOK(api.ConnectRequest{Key: fmt.Sprintf("%s-cold-%d", name, i), Spawn: spawn, User: "bench"})
		if cres != nil {
			if terr := e.terminate(ctx, cres.BackendID); err == nil {
				err = terr
			}
		}
		if err != nil {
			return nil, err
		}
		if cres.Pool != "" {
			return nil, fmt.Errorf("cold connect %d was claimed from pool %s", i, cres.Pool)
		}
		colds = append(colds, d)
	}
	cs := durationsIn(colds, time.Millisecond)
	res.values[coldFig] = RunFigure{Berth: percentile(cs, 50), Baseline: percentile(bs, 50)}
	return res, nil
}
