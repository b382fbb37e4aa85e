// Package runtime defines the contract between Berth and whatever actually
// runs backends (local processes, Docker containers, Kubernetes pods).
//
// The shape follows Nomad's task drivers: Start returns a Handle whose opaque
// State is persisted by Berth, so that a restarted Berth can Recover running
// backends instead of killing them. A runtime never touches Berth's store.
package runtime

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/berthhq/berth"
)

// ErrGone is returned by Recover (and Wait) when the instance a handle names no
// longer exists.
var ErrGone = errors.New("runtime: instance is gone")

// ErrLost is wrapped by Exit.Err when the platform took the instance away
// rather than the instance ending by itself: a Pod evicted by its node, or
// whose node was lost. Berth records such a backend as lost, not crashed.
var ErrLost = errors.New("runtime: the instance was lost")

// ErrVolumeBusy is returned (wrapped) by Start when Spec.VolumeLock is held:
// another instance, perhaps one a crashed Berth left, still has the volume.
var ErrVolumeBusy = errors.New("runtime: the volume is in use by another instance")

// Spec is everything a runtime needs to start one backend.
type Spec struct {
	BackendID string
	Key       string
	Spawn     berth.SpawnConfig
	// Env is the full environment Berth adds to the backend's own: PORT,
	// BERTH_* and the spawn's env. Runtimes add nothing else but PATH-like
	// basics where the platform needs them.
	Env map[string]string
	// Port is where the backend must listen (also in Env["PORT"]). For the
	// process runtime it is a free port on 127.0.0.1; container runtimes may
	// choose their own and report the reachable address in the Handle.
	Port int
	// StateDir, when set, is a host directory the backend gets as
	// BERTH_STATE_DIR (mode dir and volume). Container runtimes mount it.
	// A runtime whose backends share no directory with Berth (kubernetes)
	// maps mode volume to a volume of its own per Key instead (a
	// PersistentVolumeClaim), mounted where BERTH_STATE_DIR then points,
	// keeps mode dir in a directory of the instance's own synced through
	// the backend API (StateDir then unset), and refuses a StateDir.
	StateDir string
	// VolumeLock, when set, makes StateDir the key's volume (mode volume),
	// which one instance at a time may have: the instance holds the lock
	// for as long as anything of it runs — even after a Berth that started
	// it died — and Start fails with ErrVolumeBusy while another does. It
	// names a lock file beside the volume for runtimes that can hand a
	// file lock to what they start; others use their own means (see each
	// runtime's doc).
	VolumeLock string
	// Logs receives the backend's stdout and stderr, interleaved as written.
	Logs io.Writer
}

// Handle describes one running instance. Addr and State are persisted with the
// backend's record.
type Handle struct {
	BackendID string `json:"backend_id"`
	Runtime   string `json:"runtime"`
	// Addr is host:port where the proxy reaches the backend's HTTP server.
	Addr string `json:"addr"`
	// State is the runtime's own opaque data (pid and start time, container id…).
	State []byte `json:"state,omitempty"`
}

// Exit is how an instance ended.
type Exit struct {
	// Code is the exit status; -1 when unknown (e.g. killed by a signal, or
	// recovered without a parent to collect the status).
	Code int
	// Signal names the signal that killed it, if any ("SIGKILL").
	Signal string
	// OOMKilled is set when the runtime knows the instance ran out of memory.
	OOMKilled bool
	// Err is set when the runtime could not tell how the instance ended.
	Err error
	At  time.Time
}

// Runtime runs backends. All methods are safe for concurrent use.
type Runtime interface {
	// Name is the runtime's name as it appears in records ("process", "docker").
	Name() string
	// Caps says which spawns it can run (see Caps.Accepts): Berth asks
	// before it records a spawn, and Start may assume they hold.
	Caps() Caps
	// Start launches the backend and returns as soon as it is running (not
	// necessarily ready). On error nothing is left running.
	Start(ctx context.Context, spec Spec) (*Handle, error)
	// Wait blocks until the instance exits or ctx is done, and reports how it
	// ended. It works on recovered handles too.
	Wait(ctx context.Context, h *Handle) (Exit, error)
	// Stop sends signal (a name from berth.Signals; empty = the runtime's or
	// image's default), waits up to grace for the instance to exit, then kills
	// it (and every process it started). grace 0 kills at once. Stop returns
	// once the instance is gone. Stopping a gone instance is not an error.
	Stop(ctx context.Context, h *Handle, signal string, grace time.Duration) error
	// Recover re-attaches to an instance after a Berth restart, resuming log
	// capture into logs. Returns ErrGone if it is no longer running.
	Recover(ctx context.Context, h *Handle, logs io.Writer) error
	// Cleanup removes what the runtime keeps for an instance once it has
	// exited (log files, stopped containers). Safe to call more than once.
	Cleanup(ctx context.Context, h *Handle) error
}

// Lister is implemented by runtimes that can enumerate what they run, so
// Berth can remove instances it no longer owns after a restart.
type Lister interface {
	// List returns the handle of every instance this runtime (under this
	// Berth's identity) keeps: running, or exited but not yet cleaned up, so
	// that Stop and Cleanup of the ones no live backend owns leave nothing
	// behind. That includes an instance whose Start never returned (Berth
	// was killed during it): whatever Start launches must be findable by
	// its Spec.BackendID alone, from the moment it can run. Berth records
	// the backend's id and runtime durably before it calls Start, so a
	// restarted Berth can match every instance List returns to a record.
	List(ctx context.Context) ([]*Handle, error)
}

// PortChooser is implemented by runtimes that choose the port a backend
// listens on (Spec.Port, and $PORT); Berth asks before each start. Without
// it, Berth picks a free host port for the process runtime and 8080 (each
// container has its own network namespace) for the others.
type PortChooser interface {
	ChoosePort() (int, error)
}

// LateStarter is implemented by runtimes whose instances another process
// makes (an engine, an API server), which may finish a start whose caller
// no longer waits for it: a Berth killed during a Start can leave an
// instance that appears only after the restarted Berth listed what runs.
// StartSettle bounds how long after Berth's death that can still happen;
// a restarted Berth holds the key of such a start that long, then lists
// again, before it calls the backend lost.
type LateStarter interface {
	StartSettle() time.Duration
}
