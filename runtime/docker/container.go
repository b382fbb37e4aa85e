package docker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/runtime"
)

// removeTimeout bounds the removal of a container whose Start failed, which
// runs even when Start's context is done.
const removeTimeout = 30 * time.Second

// state is what Handle.State holds.
type state struct {
	ContainerID string `json:"container_id"`
	SandboxID   string `json:"sandbox_id,omitempty"` // the network sandbox it joined, if any
}

// Start creates and starts the backend's container, in a network sandbox
// from the pool when one is ready (see sandbox.go). It inspects the image
// only the first time it sees it (see pull policies), and the container
// once, to learn its address, when it joined the network itself.
func (r *Runtime) Start(ctx context.Context, spec runtime.Spec) (*runtime.Handle, error) {
	id := spec.BackendID
	if id == "" || !dockerName.MatchString(id) {
		return nil, fmt.Errorf("docker: start: backend id %q cannot name a container", id)
	}
	if spec.Spawn.Image == "" {
		return nil, fmt.Errorf("docker: start %s: the spawn has no image", id)
	}
	img, err := r.image(ctx, spec.Spawn.Image, spec.Spawn.PullPolicy)
	if err != nil {
		return nil, fmt.Errorf("docker: start %s: %w", id, err)
	}
	if spec.VolumeLock != "" {
		if err := r.volumeFree(ctx, spec.StateDir); err != nil {
			return nil, fmt.Errorf("docker: start %s: %w", id, err)
		}
	}
	if spec.StateDir != "" {
		if err := chownTree(spec.StateDir, r.user(img)); err != nil {
			return nil, fmt.Errorf("docker: start %s: prepare the state directory: %w", id, err)
		}
	}
	if sb, ok := r.pool.take(); ok {
		h, err := r.start(ctx, spec, img, sb)
		if err == nil || ctx.Err() != nil {
			return h, err
		}
		// The sandbox may have died while it waited; the direct way may
		// still work.
		r.log.Warn("start in a network sandbox failed; joining the network directly", "backend", id, "err", err)
	}
	return r.start(ctx, spec, img, sandbox{})
}

// start creates and starts the container, in sandbox sb if it has an id;
// on failure it removes the container and sb.
func (r *Runtime) start(ctx context.Context, spec runtime.Spec, img imageInfo, sb sandbox) (*runtime.Handle, error) {
	id := spec.BackendID
	opts, port, err := r.createOptions(spec, img, sb)
	if err == nil {
		var h *runtime.Handle
		if h, err = r.create(ctx, spec, opts, port, sb); err == nil {
			return h, nil
		}
	}
	if sb.id != "" {
		r.removeContainer(sb.id)
	}
	return nil, fmt.Errorf("docker: start %s: %w", id, err)
}

func (r *Runtime) create(ctx context.Context, spec runtime.Spec, opts client.ContainerCreateOptions, port int, sb sandbox) (*runtime.Handle, error) {
	created, err := r.cli.ContainerCreate(ctx, opts)
	if cerrdefs.IsNotFound(err) && sb.id == "" && r.renewNetwork(ctx) {
		opts.HostConfig.NetworkMode = container.NetworkMode(r.network())
		created, err = r.cli.ContainerCreate(ctx, opts)
	}
	if cerrdefs.IsNotFound(err) { // the image went since we saw it
		r.forgetImage(spec.Spawn.Image)
		if _, err = r.image(ctx, spec.Spawn.Image, spec.Spawn.PullPolicy); err == nil {
			created, err = r.cli.ContainerCreate(ctx, opts)
		}
	}
	if err != nil {
		// The engine may have created it although we never heard back; but
		// a name conflict means a container we did not create here.
		if !cerrdefs.IsConflict(err) {
			r.removeContainer(opts.Name)
		}
		return nil, fmt.Errorf("create container: %w", err)
	}
	cid := created.ID
	h, err := r.run(ctx, spec.BackendID, cid, port, spec.Logs, sb)
	if err != nil {
		r.unfollow(cid)
		r.removeContainer(cid)
		return nil, err
	}
	return h, nil
}

// run starts the created container, follows its logs and returns its handle.
func (r *Runtime) run(ctx context.Context, id, cid string, port int, logs io.Writer, sb sandbox) (*runtime.Handle, error) {
	if _, err := r.cli.ContainerStart(ctx, cid, client.ContainerStartOptions{}); err != nil {
		return nil, fmt.Errorf("start container: %w", err)
	}
	addr := ""
	if sb.id != "" {
		addr = net.JoinHostPort(sb.ip.String(), strconv.Itoa(port))
	} else {
		// The address first, the log stream after: it reads from the
		// container's start whenever it begins, and the engine answers
		// the inspect sooner without it.
		res, err := r.cli.ContainerInspect(ctx, cid, client.ContainerInspectOptions{})
		if err != nil {
			return nil, fmt.Errorf("inspect container: %w", err)
		}
		// A container that already exited has no address; Wait reports it.
		addr = r.addr(res.Container, port)
	}
	r.follow(cid, logs)
	raw, err := json.Marshal(state{ContainerID: cid, SandboxID: sb.id})
	if err != nil {
		return nil, err
	}
	return &runtime.Handle{BackendID: id, Runtime: Name, Addr: addr, State: raw}, nil
}

// addr is where the host reaches port of container c, or "" if it is not
// running.
func (r *Runtime) addr(c container.InspectResponse, port int) string {
	ns := c.NetworkSettings
	if ns == nil {
		return ""
	}
	if r.cfg.Publish {
		p, _ := network.PortFrom(uint16(port), network.TCP)
		for _, b := range ns.Ports[p] {
			if b.HostIP.Is4() && b.HostPort != "" {
				return net.JoinHostPort(b.HostIP.String(), b.HostPort)
			}
		}
		return ""
	}
	if ep := ns.Networks[r.cfg.Network]; ep != nil && ep.IPAddress.IsValid() {
		return net.JoinHostPort(ep.IPAddress.String(), strconv.Itoa(port))
	}
	return ""
}

// user is who runs img's containers.
func (r *Runtime) user(img imageInfo) string {
	if img.user != "" {
		return img.user
	}
	return r.cfg.User
}

// createOptions turns spec into the container to create, in sandbox sb if
// it has an id, and the port the backend listens on.
func (r *Runtime) createOptions(spec runtime.Spec, img imageInfo, sb sandbox) (client.ContainerCreateOptions, int, error) {
	sp := spec.Spawn
	port := spec.Port
	if port <= 0 {
		port = defaultPort
	}
	if port > 65535 {
		return client.ContainerCreateOptions{}, 0, fmt.Errorf("port %d is not a TCP port", port)
	}
	env := maps.Clone(spec.Env)
	if env == nil {
		env = make(map[string]string)
	}
	env["PORT"] = strconv.Itoa(port)
	if u, ok := env["BERTH_STATE_URL"]; ok && r.cfg.BackendAPIHost != "" {
		env["BERTH_STATE_URL"] = rehost(u, r.cfg.BackendAPIHost)
	}

	hc := &container.HostConfig{
		NetworkMode:    container.NetworkMode(r.network()),
		Init:           new(true),
		CapDrop:        []string{"ALL"},
		SecurityOpt:    []string{"no-new-privileges"},
		ReadonlyRootfs: sp.ReadOnlyRootFS,
		Runtime:        r.cfg.OCIRuntime,
		Resources:      r.resources(sp.Resources),
	}
	if sp.ReadOnlyRootFS {
		hc.Tmpfs = map[string]string{"/tmp": tmpfsOptions}
	}
	if spec.StateDir != "" {
		hc.Mounts = []mount.Mount{{Type: mount.TypeBind, Source: spec.StateDir, Target: stateMount}}
		env["BERTH_STATE_DIR"] = stateMount
	}
	cfg := &container.Config{
		Image:      sp.Image,
		User:       r.user(img),
		Env:        envList(env),
		StopSignal: strings.ToUpper(sp.StopSignal),
		Labels: map[string]string{
			LabelBackend:  spec.BackendID,
			LabelKey:      spec.Key,
			LabelInstance: r.cfg.Instance,
			LabelManaged:  "true",
		},
	}
	if spec.VolumeLock != "" {
		cfg.Labels[LabelVolume] = spec.StateDir
	}
	if sb.id != "" {
		hc.NetworkMode = container.NetworkMode("container:" + sb.id)
		cfg.Labels[LabelNetworkSandbox] = sb.id
	}
	if len(sp.Command) > 0 {
		// The command is a whole argv, as for the process runtime: it
		// replaces the image's ENTRYPOINT as well as its CMD.
		args := berth.ExpandArgs(sp.Command, env)
		cfg.Entrypoint, cfg.Cmd = args[:1], args[1:]
	}
	if r.cfg.Publish {
		p, _ := network.PortFrom(uint16(port), network.TCP)
		cfg.ExposedPorts = network.PortSet{p: {}}
		hc.PortBindings = network.PortMap{p: {{HostIP: netip.MustParseAddr("127.0.0.1")}}}
	}
	return client.ContainerCreateOptions{Name: "berth-" + spec.BackendID, Config: cfg, HostConfig: hc}, port, nil
}

func (r *Runtime) resources(res berth.Resources) container.Resources {
	mem, cpu, pids := res.MemoryMB, res.CPUMillis, res.Pids
	if mem == 0 {
		mem = r.cfg.MemoryMB
	}
	if cpu == 0 {
		cpu = r.cfg.CPUMillis
	}
	if pids == 0 {
		pids = r.cfg.Pids
	}
	bytes := int64(mem) << 20
	return container.Resources{
		Memory:     bytes,
		MemorySwap: bytes, // memory + swap: no swap on top of the limit
		NanoCPUs:   int64(cpu) * 1_000_000,
		PidsLimit:  new(int64(pids)),
	}
}

// rehost replaces a loopback host in URL u with host, keeping the port.
func rehost(u, host string) string {
	p, err := url.Parse(u)
	if err != nil {
		return u
	}
	h := p.Hostname()
	if ip, err := netip.ParseAddr(h); (err != nil || !ip.IsLoopback()) && h != "localhost" {
		return u
	}
	if port := p.Port(); port != "" {
		p.Host = net.JoinHostPort(host, port)
	} else {
		p.Host = host
	}
	return p.String()
}

func envList(env map[string]string) []string {
	out := make([]string, 0, len(env))
	for _, k := range slices.Sorted(maps.Keys(env)) {
		out = append(out, k+"="+env[k])
	}
	return out
}

// chownTree lets the container's user write dir. With a numeric user and
// Berth running as root it hands the tree to that uid (and gid, if given);
// otherwise (a user named in the image's /etc/passwd, or Berth not root) it
// makes the tree writable by everyone who can reach it.
func chownTree(dir, user string) error {
	uidStr, gidStr, _ := strings.Cut(user, ":")
	uid, err := strconv.Atoi(uidStr)
	gid := -1
	if err == nil && gidStr != "" {
		gid, err = strconv.Atoi(gidStr)
	}
	chown := err == nil && os.Geteuid() == 0
	return filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if chown {
			return os.Lchown(path, uid, gid)
		}
		if d.Type()&fs.ModeSymlink != 0 {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		mode := info.Mode().Perm() | 0o666
		if d.IsDir() {
			mode |= 0o777
		}
		return os.Chmod(path, mode)
	})
}

// removeContainer force-removes container ref (id or name), whatever the
// context of the caller, logging failures other than its absence.
func (r *Runtime) removeContainer(ref string) {
	ctx, cancel := context.WithTimeout(context.Background(), removeTimeout)
	defer cancel()
	_, err := r.cli.ContainerRemove(ctx, ref, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
	if err != nil && !cerrdefs.IsNotFound(err) {
		r.log.Error("remove a container", "container", ref, "err", err)
	}
}

// Wait blocks until the container is not running and reports how it ended,
// after letting its log stream catch up. ErrGone when it was removed.
func (r *Runtime) Wait(ctx context.Context, h *runtime.Handle) (runtime.Exit, error) {
	cid, err := containerID(h)
	if err != nil {
		return runtime.Exit{Code: -1, Err: err}, err
	}
	w := r.cli.ContainerWait(ctx, cid, client.ContainerWaitOptions{Condition: container.WaitConditionNotRunning})
	// No case for ctx.Done: the client reports a cancelled wait on w.Error,
	// and would block forever sending a result nobody reads.
	var code int
	select {
	case res := <-w.Result:
		code = int(res.StatusCode)
	case err := <-w.Error:
		switch {
		case ctx.Err() != nil:
			return runtime.Exit{}, ctx.Err()
		case cerrdefs.IsNotFound(err):
			return runtime.Exit{Code: -1, Err: runtime.ErrGone}, runtime.ErrGone
		}
		return runtime.Exit{}, fmt.Errorf("docker: wait %s: %w", h.BackendID, err)
	}
	e := runtime.Exit{Code: code, At: time.Now()}
	r.exitState(ctx, cid, &e)
	// The engine learns of an OOM kill from an event of its own, which can
	// come after the exit: a SIGKILL nobody here sent gets a second look,
	// for up to 3 s (200 ms, then 1 s, were seen too short on a loaded
	// machine, the second with the engine busy making and removing
	// networks). Berth's own kills are not delayed.
	_, stopped := r.stopped.Load(cid)
	for i := 0; i < 75 && e.Code == 128+9 && !e.OOMKilled && !stopped; i++ {
		time.Sleep(40 * time.Millisecond)
		r.exitState(ctx, cid, &e)
	}
	r.drain(ctx, cid)
	return e, nil
}

// exitState fills e from the container's recorded state, if it can.
func (r *Runtime) exitState(ctx context.Context, cid string, e *runtime.Exit) {
	res, err := r.cli.ContainerInspect(ctx, cid, client.ContainerInspectOptions{})
	if err != nil || res.Container.State == nil {
		return
	}
	st := res.Container.State
	e.Code, e.OOMKilled = st.ExitCode, st.OOMKilled
	if at, err := time.Parse(time.RFC3339Nano, st.FinishedAt); err == nil && !at.IsZero() {
		e.At = at
	}
}

// Stop signals the container, waits up to grace, then kills it. It returns
// once the container is not running; a missing or stopped one is no error.
func (r *Runtime) Stop(ctx context.Context, h *runtime.Handle, signal string, grace time.Duration) error {
	cid, err := containerID(h)
	if err != nil {
		return err
	}
	res, err := r.cli.ContainerInspect(ctx, cid, client.ContainerInspectOptions{})
	if cerrdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("docker: stop %s: %w", h.BackendID, err)
	}
	c := res.Container
	if c.State == nil || !c.State.Running {
		return nil
	}
	r.thawForStop(ctx, c) // a frozen container could not handle the signal
	r.stopped.Store(cid, struct{}{})
	if grace > 0 {
		if signal == "" && c.Config != nil {
			signal = c.Config.StopSignal // the spawn's, else the image's
		}
		if signal == "" {
			signal = "SIGTERM"
		}
		if err := r.kill(ctx, cid, strings.ToUpper(signal)); err != nil {
			return fmt.Errorf("docker: stop %s: %w", h.BackendID, err)
		}
		gctx, cancel := context.WithTimeout(ctx, grace)
		err := r.waitStopped(gctx, cid)
		cancel()
		if err == nil || ctx.Err() != nil {
			return err
		}
	}
	if err := r.kill(ctx, cid, "SIGKILL"); err != nil {
		return fmt.Errorf("docker: stop %s: %w", h.BackendID, err)
	}
	if err := r.waitStopped(ctx, cid); err != nil {
		return fmt.Errorf("docker: stop %s: %w", h.BackendID, err)
	}
	return nil
}

// kill sends signal; a container that is gone or no longer runs is fine.
func (r *Runtime) kill(ctx context.Context, cid, signal string) error {
	_, err := r.cli.ContainerKill(ctx, cid, client.ContainerKillOptions{Signal: signal})
	if err == nil || cerrdefs.IsNotFound(err) || cerrdefs.IsConflict(err) {
		return nil
	}
	return fmt.Errorf("send %s: %w", signal, err)
}

// waitStopped waits until container cid is not running (or gone).
func (r *Runtime) waitStopped(ctx context.Context, cid string) error {
	w := r.cli.ContainerWait(ctx, cid, client.ContainerWaitOptions{Condition: container.WaitConditionNotRunning})
	select {
	case <-w.Result:
		return nil
	case err := <-w.Error:
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if cerrdefs.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("wait: %w", err)
	}
}

// Recover re-attaches to a running container of this instance and follows
// its logs from the container's start. ErrGone when the container is
// missing, exited, or not the one the handle names.
func (r *Runtime) Recover(ctx context.Context, h *runtime.Handle, logs io.Writer) error {
	cid, err := containerID(h)
	if err != nil {
		return err
	}
	res, err := r.cli.ContainerInspect(ctx, cid, client.ContainerInspectOptions{})
	if cerrdefs.IsNotFound(err) {
		return runtime.ErrGone
	}
	if err != nil {
		return fmt.Errorf("docker: recover %s: %w", h.BackendID, err)
	}
	c := res.Container
	if c.State == nil || !c.State.Running || c.Config == nil ||
		c.Config.Labels[LabelBackend] != h.BackendID || c.Config.Labels[LabelInstance] != r.cfg.Instance {
		return runtime.ErrGone
	}
	r.follow(cid, logs)
	return nil
}

// Cleanup removes the container, killing it if it still runs, and its
// anonymous volumes, then its network sandbox if it had one. Removing a
// removed container is no error.
func (r *Runtime) Cleanup(ctx context.Context, h *runtime.Handle) error {
	st, err := handleState(h)
	if err != nil {
		return err
	}
	cid := st.ContainerID
	r.unfollow(cid)
	r.stopped.Delete(cid)
	r.freezers.Delete(cid)
	for _, ref := range []string{cid, st.SandboxID} {
		if ref == "" {
			continue
		}
		_, err = r.cli.ContainerRemove(ctx, ref, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
		if err != nil && !cerrdefs.IsNotFound(err) {
			return fmt.Errorf("docker: cleanup %s: %w", h.BackendID, err)
		}
	}
	return nil
}

// List returns a handle for every container of this instance, running or
// not, until Cleanup removes it. Their Addr is empty: List serves to stop
// and remove what no live backend owns.
func (r *Runtime) List(ctx context.Context) ([]*runtime.Handle, error) {
	res, err := r.cli.ContainerList(ctx, client.ContainerListOptions{
		All:     true,
		Filters: make(client.Filters).Add("label", LabelInstance+"="+r.cfg.Instance, LabelManaged+"=true"),
	})
	if err != nil {
		return nil, fmt.Errorf("docker: list: %w", err)
	}
	hs := make([]*runtime.Handle, 0, len(res.Items))
	for _, c := range res.Items {
		raw, err := json.Marshal(state{ContainerID: c.ID, SandboxID: c.Labels[LabelNetworkSandbox]})
		if err != nil {
			return nil, err
		}
		hs = append(hs, &runtime.Handle{BackendID: c.Labels[LabelBackend], Runtime: Name, State: raw})
	}
	return hs, nil
}

// volumeFree returns runtime.ErrVolumeBusy (wrapped) when a container of the
// engine, of any Berth, that has not exited carries dir as its volume: a
// file lock cannot be handed into a container, so the engine's own record
// of what runs is the lock. A container that has exited no longer writes.
func (r *Runtime) volumeFree(ctx context.Context, dir string) error {
	res, err := r.cli.ContainerList(ctx, client.ContainerListOptions{
		All:     true,
		Filters: make(client.Filters).Add("label", LabelVolume+"="+dir),
	})
	if err != nil {
		return fmt.Errorf("check the volume: %w", err)
	}
	for _, c := range res.Items {
		switch c.State {
		case container.StateExited, container.StateDead:
			continue
		case container.StateCreated:
			// Never started, so it never wrote; and only the Berth that
			// holds the key starts a created container. One a killed
			// Berth created (the engine may finish a create late) is
			// removed by the restarted Berth's sweeps.
			continue
		}
		return fmt.Errorf("%w: container %s (backend %s) is %s", runtime.ErrVolumeBusy, c.ID[:min(12, len(c.ID))], c.Labels[LabelBackend], c.State)
	}
	return nil
}

func containerID(h *runtime.Handle) (string, error) {
	st, err := handleState(h)
	return st.ContainerID, err
}

func handleState(h *runtime.Handle) (state, error) {
	var st state
	if err := json.Unmarshal(h.State, &st); err != nil {
		return state{}, fmt.Errorf("docker: handle of %s: %w", h.BackendID, err)
	}
	if st.ContainerID == "" {
		return state{}, errors.New("docker: handle of " + h.BackendID + " names no container")
	}
	return st, nil
}
