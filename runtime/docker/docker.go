// Package docker is the runtime that runs each backend as a container on a
// Docker Engine, through the Engine API (API 1.41 and later; the client
// negotiates down). It never shells out to the docker CLI, and List and
// Recover see only containers labelled with its instance (Config.Instance).
//
// Networking. Every backend joins one Berth-managed bridge network
// (Config.Network, created if missing, with inter-container traffic
// disabled, so a backend reaches another only through the proxy) and
// listens on Spec.Port (8080 unless set) in its own network namespace. The
// proxy dials container-IP:port, which works wherever the host routes to
// the bridge: Linux engines, and Berth running in a container attached to
// the same network. Where it does not (Docker Desktop, a remote engine),
// set Config.Publish: each backend's port is then published on 127.0.0.1
// with a port the engine picks, and Handle.Addr is that. Joining the
// network is most of a container's start, so the runtime keeps network
// sandboxes ready for backends to join (Config.Sandboxes; sandbox.go).
//
// The control API must stay out of backends' reach: it binds 127.0.0.1 on
// the host, which containers cannot reach (their 127.0.0.1 is their own).
// Backends can reach the host's other addresses, among them the network's
// gateway (Gateway): bind the backend API there, never the control API, and
// set Config.BackendAPIHost so BERTH_STATE_URL names an address containers
// can reach.
//
// Limits and hardening, applied to every container:
//   - memory (resources.memory_mb, default Config.MemoryMB = 512 MiB) with
//     no swap on top, CPU (resources.cpu_millis → NanoCPUs, default one
//     CPU), pids (resources.pids, default 256);
//   - CapDrop ALL, no-new-privileges, an init process (docker-init) as pid 1
//     that forwards signals and reaps zombies;
//   - the user: an image that names a USER runs as that user; an image that
//     names none — which Docker would run as root — runs as Config.User
//     (default 65534:65534, "nobody");
//   - spawn.read_only_root_fs: a read-only root filesystem with a tmpfs at
//     /tmp (64 MiB, counted against the memory limit);
//   - Spec.StateDir (state modes dir and volume) is bind-mounted at
//     /berth/state, which BERTH_STATE_DIR then names. The runtime hands the
//     host directory to the container's user (chown when the user is numeric
//     and Berth runs as root, else it makes the tree world-writable).
//     A key's volume (Spec.VolumeLock set) is one container's at a time: the
//     container carries the directory in LabelVolume, and Start refuses
//     (runtime.ErrVolumeBusy) while any container of the engine, of any
//     Berth instance, that carries it has not exited.
//
// Stop sends the stop signal (the one asked for, else the spawn's
// stop_signal, else the image's STOPSIGNAL, else SIGTERM), waits the grace
// period, then SIGKILLs. Docker reports a death by signal N as exit code
// 128+N, so Exit.Code carries that and Exit.Signal stays empty: the runtime
// cannot tell it from a program that exits with that code. Exit.OOMKilled
// comes from the engine's record of the container, which also keeps exit
// codes across a restart of Berth; the engine can miss an OOM kill in the
// first moments of a container's life (containerd is not yet watching its
// cgroup), which then reads as a plain exit 137. A command the image lacks still starts
// (docker-init runs) and exits with code 127 at once.
//
// Logs are read from the engine (json-file, local, or any driver under
// dual logging) from the container's start, both at Start and at Recover,
// so a recovered backend's logs repeat what an earlier Berth captured.
// Containers are never removed automatically: Cleanup removes them, and
// List finds those a crashed Berth left behind.
package docker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"regexp"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/runtime"
)

// Name is the runtime's name in records.
const Name = "docker"

// Labels every container carries; List and the engine filter on the last two.
const (
	LabelBackend  = "berth.backend"
	LabelKey      = "berth.key"
	LabelInstance = "berth.instance"
	LabelManaged  = "berth.managed"
	// LabelVolume names the host directory of a mode-volume backend, so
	// the engine can tell whether a container still has the volume.
	LabelVolume = "berth.volume"
)

const (
	defaultNetwork  = "berth"
	defaultInstance = "default"
	defaultUser     = "65534:65534"
	defaultMemoryMB = 512
	defaultCPU      = 1000
	defaultPids     = 256
	defaultPort     = 8080
	stateMount      = "/berth/state"
	tmpfsOptions    = "rw,nosuid,nodev,size=64m"
	iccOption       = "com.docker.network.bridge.enable_icc"
	// networkSettle is how long createNetwork waits for concurrent
	// creations of the same network to become visible.
	networkSettle = time.Second
)

var (
	_ runtime.Runtime     = (*Runtime)(nil)
	_ runtime.Lister      = (*Runtime)(nil)
	_ runtime.LateStarter = (*Runtime)(nil)
)

// Config configures the docker runtime. Zero values mean the defaults.
type Config struct {
	// Host is the engine's address ("unix:///var/run/docker.sock",
	// "tcp://…"); empty means $DOCKER_HOST, else the default socket.
	Host string
	// Network is the bridge network backends join (default "berth"),
	// created if missing.
	Network string
	// RemoveNetwork makes Close remove the network when Berth created it
	// and no container uses it any more (berth dev: a stop leaves nothing
	// of Berth's). Off for servers that share an engine and its network
	// with others: one's Close racing another's start could leave the
	// engine two networks of one name.
	RemoveNetwork bool
	// Instance identifies this Berth among those sharing an engine (default
	// "default"): List, and so the removal of orphans, only sees containers
	// labelled with it. Give each Berth on one engine its own.
	Instance string
	// BackendAPIHost, when set, replaces a loopback host in BERTH_STATE_URL
	// (keeping the port), so backends reach the backend API: e.g. Gateway(),
	// where Berth then binds it, or host.docker.internal on Docker Desktop.
	BackendAPIHost string
	// Publish publishes each backend's port on 127.0.0.1 instead of dialling
	// the container's IP; for engines whose container IPs the host cannot
	// route to.
	Publish bool
	// User runs images that name no USER (default "65534:65534").
	User string
	// MemoryMB, CPUMillis and Pids are the limits of spawns that set none
	// (defaults 512, 1000 and 256).
	MemoryMB  int
	CPUMillis int
	Pids      int
	// OCIRuntime selects the engine's OCI runtime for backends, e.g. "runsc"
	// for gVisor; empty means the engine's default.
	OCIRuntime string
	// Sandboxes is how many network sandboxes the runtime keeps ready, so
	// a start need not wait for the engine to wire up a network namespace
	// (see sandbox.go); 0 means 2, a negative number none.
	Sandboxes int
	// NoCgroupFreeze makes Freeze and Thaw always go through the engine
	// (docker pause), even where the container's cgroup is writable here.
	NoCgroupFreeze bool
	Logger         *slog.Logger
}

// dockerName matches the names the engine accepts for networks and containers.
var dockerName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)

// Validate checks the config after defaults are applied.
func (c *Config) Validate() error {
	switch {
	case !dockerName.MatchString(c.Network):
		return fmt.Errorf("docker: Network: %q is not a valid network name", c.Network)
	case c.Instance == "":
		return errors.New("docker: Instance: must not be empty")
	case c.User == "":
		return errors.New("docker: User: must not be empty")
	case c.MemoryMB < 6:
		return errors.New("docker: MemoryMB: must be at least 6, the engine's minimum")
	case c.CPUMillis < 0:
		return errors.New("docker: CPUMillis: must not be negative")
	case c.Pids < 0:
		return errors.New("docker: Pids: must not be negative")
	}
	return nil
}

func (c *Config) setDefaults() {
	set := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	set(&c.Network, defaultNetwork)
	set(&c.Instance, defaultInstance)
	set(&c.User, defaultUser)
	if c.MemoryMB == 0 {
		c.MemoryMB = defaultMemoryMB
	}
	if c.CPUMillis == 0 {
		c.CPUMillis = defaultCPU
	}
	if c.Pids == 0 {
		c.Pids = defaultPids
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Runtime runs backends as containers. Close it when done.
type Runtime struct {
	cli *client.Client
	cfg Config
	log *slog.Logger

	// The network's id and gateway: another Berth's Close may remove the
	// network, and the runtime then makes it anew (renewNetwork).
	netMu   sync.Mutex
	netID   string
	gateway netip.Addr

	imgMu  sync.Mutex
	images map[string]imageInfo // by reference, present on the engine

	// Log followers, by container id; they live until the stream ends,
	// Cleanup or Close.
	mu      sync.Mutex
	follows map[string]*follower
	// stopped holds the containers Stop signalled, so Wait can tell a kill
	// of its own from one the kernel made (see oomKilled).
	stopped sync.Map     // container id → struct{}
	pool    *sandboxPool // nil when off
	// freezers caches where each container's cgroup freezer is (freeze.go).
	freezers sync.Map // container id → freezer
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

// New connects to the engine (failing if it does not answer) and makes sure
// the network exists.
func New(ctx context.Context, cfg Config) (*Runtime, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cli, err := newClient(ctx, cfg.Host)
	if err != nil {
		return nil, err
	}
	r := &Runtime{cli: cli, cfg: cfg, log: cfg.Logger, images: make(map[string]imageInfo), follows: make(map[string]*follower)}
	if err := r.ensureNetwork(ctx); err != nil {
		cli.Close()
		return nil, err
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	r.startPool(ctx)
	return r, nil
}

func newClient(ctx context.Context, host string) (*client.Client, error) {
	opts := []client.Opt{client.FromEnv}
	if host != "" {
		opts = append(opts, client.WithHost(host))
	}
	cli, err := client.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("docker: %w", err)
	}
	if _, err := cli.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true}); err != nil {
		cli.Close()
		return nil, fmt.Errorf("docker: the engine does not answer: %w", err)
	}
	return cli, nil
}

// Available reports whether an engine answers at host (empty: $DOCKER_HOST
// or the default socket) within two seconds, so `berth dev` can choose this
// runtime only when it would work.
func Available(ctx context.Context, host string) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	cli, err := newClient(ctx, host)
	if err != nil {
		return false
	}
	cli.Close()
	return true
}

// Close stops the log followers, removes the ready network sandboxes,
// removes the network (with Config.RemoveNetwork) if Berth created it and
// no container uses it any more, and closes the connection to the engine. Backends' containers keep
// running (and so the network); a new Runtime recovers them.
func (r *Runtime) Close() error {
	r.cancel()
	r.wg.Wait()
	if r.cfg.RemoveNetwork {
		r.removeNetwork()
	}
	return r.cli.Close()
}

// removeNetwork removes the network when it is Berth's and empty. The
// engine refuses while any container is attached, including another
// Berth's, which then keeps it; one that is just starting makes it anew
// (renewNetwork).
func (r *Runtime) removeNetwork() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	id := r.network()
	res, err := r.cli.NetworkInspect(ctx, id, client.NetworkInspectOptions{})
	if err != nil || res.Network.Labels[LabelManaged] != "true" || len(res.Network.Containers) > 0 {
		return
	}
	if _, err := r.cli.NetworkRemove(ctx, id, client.NetworkRemoveOptions{}); err != nil && !cerrdefs.IsNotFound(err) {
		r.log.Debug("network left in place", "network", r.cfg.Network, "why", err)
	}
}

// network returns the id of the backends' network.
func (r *Runtime) network() string {
	r.netMu.Lock()
	defer r.netMu.Unlock()
	return r.netID
}

// renewNetwork makes the network anew if it is gone (see removeNetwork),
// after a create failed for want of something; it reports whether it did.
func (r *Runtime) renewNetwork(ctx context.Context) bool {
	_, err := r.cli.NetworkInspect(ctx, r.network(), client.NetworkInspectOptions{})
	if !cerrdefs.IsNotFound(err) {
		return false
	}
	old := r.Gateway()
	if err := r.ensureNetwork(ctx); err != nil {
		r.log.Warn("the network is gone and could not be made anew", "network", r.cfg.Network, "err", err)
		return false
	}
	if gw := r.Gateway(); gw != old {
		r.log.Warn("the network was made anew with another gateway; backends cannot reach the backend API until Berth restarts", "network", r.cfg.Network, "gateway", gw)
	}
	return true
}

// Name returns "docker".
func (r *Runtime) Name() string { return Name }

// Caps implements runtime.Runtime: images (a command replaces the
// entrypoint), freezing, and every state mode (dir and volume are bind
// mounts of Berth's host).
func (r *Runtime) Caps() runtime.Caps {
	return runtime.Caps{Images: true, Freeze: true,
		StateModes: []berth.StateMode{berth.StateModeBlob, berth.StateModeDir, berth.StateModeVolume}}
}

// StartSettle implements runtime.LateStarter: the engine finishes a create
// it received even when the Berth that asked is gone; within seconds, unless
// it is badly overloaded.
func (r *Runtime) StartSettle() time.Duration { return 5 * time.Second }

// Gateway is the host's address on the backends' network: where Berth can
// bind the backend API so containers reach it. Invalid when the network
// has no IPv4 gateway (e.g. a network created elsewhere without one).
func (r *Runtime) Gateway() netip.Addr {
	r.netMu.Lock()
	defer r.netMu.Unlock()
	return r.gateway
}

// ensureNetwork finds or creates the network and learns its gateway.
func (r *Runtime) ensureNetwork(ctx context.Context) error {
	name := r.cfg.Network
	var res client.NetworkInspectResult
	for attempt := 0; ; attempt++ {
		id, err := r.findNetwork(ctx)
		if err == nil && id == "" {
			id, err = r.createNetwork(ctx)
		}
		if err == nil {
			res, err = r.cli.NetworkInspect(ctx, id, client.NetworkInspectOptions{})
		}
		// Another Berth's Close may remove the network it found.
		if cerrdefs.IsNotFound(err) && attempt < 2 {
			continue
		}
		if err != nil {
			return fmt.Errorf("docker: network %s: %w", name, err)
		}
		break
	}
	n := res.Network
	if n.Options[iccOption] != "false" {
		r.log.Warn("backends on this network can reach each other directly; create it with "+iccOption+"=false, or let Berth create it", "network", name)
	}
	r.netMu.Lock()
	defer r.netMu.Unlock()
	r.netID = n.ID
	for _, c := range n.IPAM.Config {
		if c.Gateway.Is4() {
			r.gateway = c.Gateway
			break
		}
	}
	return nil
}

// findNetwork returns the id of the network named Config.Network, or "" if
// there is none. Engines before API 1.44 allow two networks of one name
// (see createNetwork); then it is the oldest.
func (r *Runtime) findNetwork(ctx context.Context) (string, error) {
	name := r.cfg.Network
	list, err := r.cli.NetworkList(ctx, client.NetworkListOptions{Filters: make(client.Filters).Add("name", name)})
	if err != nil {
		return "", err
	}
	var oldest *network.Summary
	for i, n := range list.Items {
		if n.Name != name {
			continue // the filter matches substrings
		}
		if oldest == nil || n.Created.Before(oldest.Created) || n.Created.Equal(oldest.Created) && n.ID < oldest.ID {
			oldest = &list.Items[i]
		}
	}
	if oldest == nil {
		return "", nil
	}
	return oldest.ID, nil
}

// createNetwork creates the network and returns its id. Two Berths (or
// runtimes) may race to create it, and engines before API 1.44 let both
// succeed. So each racer waits for the others' creations to land, then all
// keep the oldest network of the name and remove their own if it is not
// that. The wait is needed because a network becomes visible some time
// after the engine stamps its creation time.
func (r *Runtime) createNetwork(ctx context.Context) (string, error) {
	created, err := r.cli.NetworkCreate(ctx, r.cfg.Network, client.NetworkCreateOptions{
		Driver:  "bridge",
		Options: map[string]string{iccOption: "false"},
		Labels:  map[string]string{LabelManaged: "true"},
	})
	if cerrdefs.IsConflict(err) { // newer engines refuse the second
		return r.findNetwork(ctx)
	}
	if err != nil {
		return "", err
	}
	select {
	case <-time.After(networkSettle):
	case <-ctx.Done():
	}
	keep, err := r.findNetwork(ctx)
	if err != nil || keep == created.ID || keep == "" {
		return created.ID, err
	}
	if _, err := r.cli.NetworkRemove(ctx, created.ID, client.NetworkRemoveOptions{}); err != nil {
		r.log.Warn("remove a duplicate network", "network", r.cfg.Network, "id", created.ID, "err", err)
	}
	return keep, nil
}
