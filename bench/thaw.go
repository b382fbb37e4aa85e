package bench

import (
	"context"
	"fmt"
	"net/url"
	"os/exec"
	"strings"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
)

const (
	figThawProcess = "thaw → first 200, process, p50"
	figThawDocker  = "thaw → first 200, Docker, p50"
)

func init() {
	scenarios = append(scenarios, &scenario{
		name:    "thaw",
		summary: "first request to a frozen backend (idle_action freeze) → its 200, vs a request to the same backend running",
		figures: []figureSpec{
			{name: figThawProcess, unit: "ms", baseline: "warm request", target: target{atMost, 5},
				method: "a bench backend spawned with idle_action freeze and max_idle_seconds 1; each sample waits until its record says frozen (frozen_at), then times GET / through the proxy on a new connection until the 200 (the proxy thaws it first: SIGCONT to its process group, as the bench's Berth has no --cgroup-dir), then at once the same GET on a new connection to the thawed backend (the baseline); 15 samples per run (3 with --quick) after 1 discarded"},
			{name: figThawDocker, unit: "ms", baseline: "warm request", target: target{atMost, 5},
				method: "as the process row, with spawn.image (the FROM scratch bench image): Berth writes the container's cgroup freezer itself when it can, else docker pause and unpause through the Engine API (the notes say which)"},
		},
		run: runThaw,
	})
}

func runThaw(ctx context.Context, e *env, r *runCtx) (*result, error) {
	res := newResult()
	n := size(&e.cfg, 15, 3)
	maxIdle, grace := 1, 1
	spawn := &berth.SpawnConfig{Command: e.backend, MaxIdleSeconds: &maxIdle, GraceSeconds: &grace,
		IdleAction: berth.IdleFreeze, MaxFrozenSeconds: 3600}
	if err := e.thaw(ctx, res, figThawProcess, fmt.Sprintf("thaw-process-%d", r.n), spawn, n); err != nil {
		return nil, err
	}
	if why := skipDocker(ctx, e); why != "" {
		res.skipped[figThawDocker] = why
		return res, nil
	}
	docker := *spawn
	docker.Command, docker.Image, docker.PullPolicy = nil, benchImage, "never"
	if err := e.thaw(ctx, res, figThawDocker, fmt.Sprintf("thaw-docker-%d", r.n), &docker, n); err != nil {
		return nil, err
	}
	return res, nil
}

// thaw measures figure fig on a backend spawned for key: n thaws, each
// followed by a warm request.
func (e *env) thaw(ctx context.Context, res *result, fig, key string, spawn *berth.SpawnConfig, n int) error {
	c, err := e.api.Connect(ctx, api.ConnectRequest{Key: key, Spawn: spawn, User: "bench", Wait: true})
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer e.terminate(context.WithoutCancel(ctx), c.BackendID)
	if c.State != berth.StateReady {
		return fmt.Errorf("backend %s is %s, not ready", c.BackendID, c.State)
	}
	u, err := url.Parse(c.URL)
	if err != nil {
		return err
	}
	req := getRequest(u.Host, u.Path)
	once := func() (time.Duration, error) {
		rc := newRawClient(u.Host, req)
		rc.deadline = time.Now().Add(30 * time.Second)
		defer rc.Close()
		return timed(rc)()
	}
	var thawed, warm []time.Duration
	how := ""
	for i := range n + 1 {
		if err := e.awaitFrozen(ctx, c.BackendID); err != nil {
			return err
		}
		if i == 0 && spawn.Image != "" {
			how = "; frozen through " + frozenThrough(ctx, c.BackendID)
		}
		dt, err := once()
		if err != nil {
			return fmt.Errorf("the request that thaws: %w", err)
		}
		dw, err := once()
		if err != nil {
			return fmt.Errorf("the warm request: %w", err)
		}
		if i > 0 {
			thawed, warm = append(thawed, dt), append(warm, dw)
		}
	}
	ts, ws := durationsIn(thawed, time.Millisecond), durationsIn(warm, time.Millisecond)
	res.values[fig] = RunFigure{Berth: percentile(ts, 50), Baseline: percentile(ws, 50)}
	res.notes[fig] = fmt.Sprintf("thaw ÷ warm at p50 %.1f×, thaw − warm %+.2f ms; p90 thaw %.2f ms, warm %.2f ms; min %.2f / %.2f ms",
		percentile(ts, 50)/percentile(ws, 50), percentile(ts, 50)-percentile(ws, 50), percentile(ts, 90), percentile(ws, 90), ts[0], ws[0]) + how
	return nil
}

// frozenThrough says how Berth froze backend id's container: the engine
// calls a container it paused "Paused"; one frozen through its cgroup
// runs, to the engine.
func frozenThrough(ctx context.Context, id string) string {
	out, err := exec.CommandContext(ctx, "docker", "ps", "--filter", "label=berth.backend="+id, "--format", "{{.Status}}").Output()
	switch {
	case err != nil:
		return "? (docker ps: " + oneLine(err.Error()) + ")"
	case strings.Contains(string(out), "Paused"):
		return "the engine (docker pause)"
	}
	return "the container's cgroup freezer, written by Berth"
}

// awaitFrozen polls the backend's record until it says frozen.
func (e *env) awaitFrozen(ctx context.Context, id string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := e.api.Backend(ctx, id)
		if err != nil {
			return err
		}
		if b.FrozenAt != nil {
			return nil
		}
		if !b.State.Live() {
			return fmt.Errorf("backend %s ended (%s) instead of freezing", id, b.Reason)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("backend %s not frozen 30 s after it was last used", id)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
