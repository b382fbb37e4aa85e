package docker

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
	"golang.org/x/sys/unix"

	"github.com/berthhq/berth/runtime"
)

var _ runtime.Freezer = (*Runtime)(nil)

// Freeze freezes the container's processes with the kernel's cgroup
// freezer. When the container's cgroup is reachable from here (Berth on
// the engine's host, cgroup v1 freezer.state or v2 cgroup.freeze
// writable), Berth writes it itself; otherwise it asks the engine (docker
// pause), which does the same through containerd and runc. The engine's
// way costs about 20 ms per thaw on the machines Berth is measured on,
// four times the 5 ms a thaw may take (BENCHMARKS.md, thaw); the direct
// way, 0.1 ms. A container frozen directly is "running" to the engine
// (docker ps does not say paused); Berth's records say frozen, and Stop
// thaws before it signals.
func (r *Runtime) Freeze(ctx context.Context, h *runtime.Handle) error {
	cid, err := containerID(h)
	if err != nil {
		return err
	}
	if fz, ok := r.freezer(ctx, cid); ok {
		if err := fz.set(ctx, true); err != nil {
			return fmt.Errorf("docker: freeze %s: %w", h.BackendID, err)
		}
		return nil
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

// Thaw thaws the container's cgroup, and unpauses it if the engine says
// it is paused; a container that is neither is left as it is.
func (r *Runtime) Thaw(ctx context.Context, h *runtime.Handle) error {
	cid, err := containerID(h)
	if err != nil {
		return err
	}
	fz, direct := r.freezer(ctx, cid)
	if direct {
		if err := fz.set(ctx, false); err != nil {
			return fmt.Errorf("docker: thaw %s: %w", h.BackendID, err)
		}
		if !fz.fresh {
			return nil // this Runtime froze it: not through the engine
		}
	}
	_, err = r.cli.ContainerUnpause(ctx, cid, client.ContainerUnpauseOptions{})
	switch {
	case err == nil:
		return nil
	case cerrdefs.IsNotFound(err):
		if direct {
			return nil
		}
		return runtime.ErrGone
	case r.pausedIs(ctx, cid, false):
		return nil // not paused: running, or not running at all (409 or 500)
	}
	return fmt.Errorf("docker: thaw %s: %w", h.BackendID, err)
}

// thawForStop thaws a running container before Stop signals it: one
// frozen directly (by a Berth that died meanwhile, say) would keep the
// signal, even SIGKILL under cgroup v1, pending until thawed.
func (r *Runtime) thawForStop(ctx context.Context, c container.InspectResponse) {
	if r.cfg.NoCgroupFreeze || c.State == nil {
		return
	}
	fz, ok := r.freezers.Load(c.ID)
	if !ok {
		fz = findFreezer(c.State.Pid, c.ID)
		r.freezers.Store(c.ID, fz)
	}
	if f := fz.(freezer); f.dir != "" && f.frozen() {
		f.set(ctx, false)
	}
}

// pausedIs reports whether the engine says container cid's paused flag
// is want; false when it cannot tell.
func (r *Runtime) pausedIs(ctx context.Context, cid string, want bool) bool {
	res, err := r.cli.ContainerInspect(ctx, cid, client.ContainerInspectOptions{})
	return err == nil && res.Container.State != nil && res.Container.State.Paused == want
}

// freezer is a container's cgroup freezer as Berth reaches it.
type freezer struct {
	dir string // the cgroup's directory
	v2  bool   // cgroup.freeze and cgroup.events, else freezer.state
	// fresh: found by this call, not cached from a Freeze of this
	// Runtime; the container may have been paused through the engine.
	fresh bool
}

// freezer finds where container cid's cgroup freezer is, from its init
// process's /proc/<pid>/cgroup, if that is writable here.
func (r *Runtime) freezer(ctx context.Context, cid string) (freezer, bool) {
	if r.cfg.NoCgroupFreeze {
		return freezer{}, false
	}
	if v, ok := r.freezers.Load(cid); ok {
		fz := v.(freezer)
		return fz, fz.dir != ""
	}
	res, err := r.cli.ContainerInspect(ctx, cid, client.ContainerInspectOptions{})
	if err != nil || res.Container.State == nil || res.Container.State.Pid <= 0 {
		return freezer{}, false
	}
	fz := findFreezer(res.Container.State.Pid, res.Container.ID)
	r.freezers.Store(cid, fz) // also "none": not looked for again
	fz.fresh = true
	return fz, fz.dir != ""
}

// findFreezer reads pid's cgroups and returns its freezer's directory, or
// a zero freezer when none is writable here. A v1 freezer hierarchy wins
// over the v2 one (in a hybrid setup the engine freezes through v1). The
// path must name the container (docker's always do: /docker/<id>,
// docker-<id>.scope): pid is the engine's, and an engine on another host
// (DOCKER_HOST=tcp://…) numbers processes apart from this one's.
func findFreezer(pid int, cid string) freezer {
	if cid == "" {
		return freezer{}
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		return freezer{}
	}
	var v2 freezer
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		// hierarchy-ID:controllers:path
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 || strings.Contains(parts[2], "..") || !strings.Contains(parts[2], cid) {
			continue
		}
		switch {
		case parts[1] == "" && parts[0] == "0":
			for _, root := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
				dir := filepath.Join(root, parts[2])
				if writable(filepath.Join(dir, "cgroup.freeze")) && isCgroup2(root) {
					v2 = freezer{dir: dir, v2: true}
					break
				}
			}
		case strings.Contains(","+parts[1]+",", ",freezer,"):
			dir := filepath.Join("/sys/fs/cgroup/freezer", parts[2])
			if writable(filepath.Join(dir, "freezer.state")) {
				return freezer{dir: dir}
			}
		}
	}
	return v2
}

func writable(path string) bool { return unix.Access(path, unix.W_OK) == nil }

func isCgroup2(dir string) bool {
	var sfs unix.Statfs_t
	return unix.Statfs(dir, &sfs) == nil && sfs.Type == unix.CGROUP2_SUPER_MAGIC
}

// frozen reports whether the cgroup is frozen, or freezing.
func (fz freezer) frozen() bool {
	if fz.v2 {
		b, err := os.ReadFile(filepath.Join(fz.dir, "cgroup.freeze"))
		return err == nil && string(bytes.TrimSpace(b)) == "1"
	}
	b, err := os.ReadFile(filepath.Join(fz.dir, "freezer.state"))
	return err == nil && string(bytes.TrimSpace(b)) != "THAWED"
}

// set freezes (or thaws) the cgroup and waits until the kernel says every
// task is frozen (thawed).
func (fz freezer) set(ctx context.Context, frozen bool) error {
	file, value, done := "freezer.state", "THAWED", func(b []byte) bool { return string(bytes.TrimSpace(b)) == "THAWED" }
	switch {
	case fz.v2 && frozen:
		file, value, done = "cgroup.freeze", "1", func(b []byte) bool { return bytes.Contains(b, []byte("frozen 1")) }
	case fz.v2:
		file, value, done = "cgroup.freeze", "0", func(b []byte) bool { return bytes.Contains(b, []byte("frozen 0")) }
	case frozen:
		value, done = "FROZEN", func(b []byte) bool { return string(bytes.TrimSpace(b)) == "FROZEN" }
	}
	if err := os.WriteFile(filepath.Join(fz.dir, file), []byte(value), 0); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return runtime.ErrGone // the container ended, its cgroup with it
		}
		return err
	}
	state := "freezer.state"
	if fz.v2 {
		state = "cgroup.events"
	}
	for d := 50 * time.Microsecond; ; d = min(2*d, 20*time.Millisecond) {
		b, err := os.ReadFile(filepath.Join(fz.dir, state))
		if err != nil {
			return err
		}
		if done(b) {
			return nil
		}
		if frozen && !fz.v2 {
			// A v1 freeze that stalls (FREEZING) is retried by writing
			// FROZEN again, as runc does.
			os.WriteFile(filepath.Join(fz.dir, file), []byte(value), 0)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
		}
	}
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
