package docker

import (
	"context"
	"encoding/json"
	"fmt"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/berthhq/berth/runtime"
)

var _ runtime.Freezer = (*Runtime)(nil)

// Freeze pauses the container (docker pause: the engine's cgroup freezer,
// v1 freezer.state or v2 cgroup.freeze, whichever the host has). The
// engine answers once every process is frozen.
func (r *Runtime) Freeze(ctx context.Context, h *runtime.Handle) error {
	cid, err := containerID(h)
	if err != nil {
		return err
	}
	_, err = r.cli.ContainerPause(ctx, cid, client.ContainerPauseOptions{})
	switch {
	case err == nil:
		return nil
	case cerrdefs.IsNotFound(err):
		return runtime.ErrGone
	case r.pausedIs(ctx, cid, true):
		return nil // paused already (engines answer 409 or 500)
	}
	return fmt.Errorf("docker: freeze %s: %w", h.BackendID, err)
}

// Thaw unpauses the container; one that is not paused is left as it is.
func (r *Runtime) Thaw(ctx context.Context, h *runtime.Handle) error {
	cid, err := containerID(h)
	if err != nil {
		return err
	}
	_, err = r.cli.ContainerUnpause(ctx, cid, client.ContainerUnpauseOptions{})
	switch {
	case err == nil:
		return nil
	case cerrdefs.IsNotFound(err):
		return runtime.ErrGone
	case r.pausedIs(ctx, cid, false):
		return nil // not paused: running, or not running at all (409 or 500)
	}
	return fmt.Errorf("docker: thaw %s: %w", h.BackendID, err)
}

// pausedIs reports whether the engine says container cid's paused flag
// is want; false when it cannot tell.
func (r *Runtime) pausedIs(ctx context.Context, cid string, want bool) bool {
	res, err := r.cli.ContainerInspect(ctx, cid, client.ContainerInspectOptions{})
	return err == nil && res.Container.State != nil && res.Container.State.Paused == want
}

// Memory is the container's memory usage as docker stats shows it: the
// cgroup's usage less the inactive page cache the kernel may reclaim.
func (r *Runtime) Memory(ctx context.Context, h *runtime.Handle) (int64, error) {
	st, err := r.stats(ctx, h)
	if err != nil {
		return 0, err
	}
	m := st.MemoryStats
	used := m.Usage
	for _, k := range []string{"total_inactive_file", "inactive_file"} { // cgroup v1, v2
		if v, ok := m.Stats[k]; ok && v <= used {
			used -= v
			break
		}
	}
	return int64(used), nil
}

// stats reads one sample of the container's statistics.
func (r *Runtime) stats(ctx context.Context, h *runtime.Handle) (container.StatsResponse, error) {
	var st container.StatsResponse
	cid, err := containerID(h)
	if err != nil {
		return st, err
	}
	res, err := r.cli.ContainerStats(ctx, cid, client.ContainerStatsOptions{})
	if cerrdefs.IsNotFound(err) {
		return st, runtime.ErrGone
	}
	if err != nil {
		return st, fmt.Errorf("docker: stats of %s: %w", h.BackendID, err)
	}
	defer res.Body.Close()
	if err := json.NewDecoder(res.Body).Decode(&st); err != nil {
		return st, fmt.Errorf("docker: stats of %s: %w", h.BackendID, err)
	}
	return st, nil
}
