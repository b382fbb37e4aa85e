// Package process is the runtime that runs each backend as a local process
// group: it works on any Linux host and is what `berth dev` uses when no
// Docker engine answers.
//
// Every backend gets a directory Dir/<backend id> holding its working
// directory (work/, also $HOME and $TMPDIR), its output log (output.log)
// and its handle (handle.json, which List reads). Cleanup prepares the next
// backend's directory (Dir/.spare-N), so a start usually only renames one
// into place; what a backend's processes used (work/, output.log) is never
// given to another. The backend writes stdout and stderr straight to
// output.log, so it survives Berth being killed (no pipe to break), and
// the runtime tails that file into Spec.Logs. A restarted Berth re-attaches
// through Recover, checking the pid together with the process start time,
// so a reused pid is never mistaken for the backend.
//
// A backend of mode volume holds the lock file Spec.VolumeLock (flock,
// exclusive) through a descriptor it inherits as file descriptor 3, for as
// long as any of its processes keeps it open: a second backend for the same
// volume cannot start while one still runs, even one a crashed Berth left.
//
// Stop signals the whole process group, waits up to the grace period for the
// leader, then SIGKILLs the group, and keeps killing until no process of the
// group is left. The runtime never signals a group it cannot prove is its
// own: when the leader's pid now belongs to a process with another start
// time, the group is gone and nothing is sent.
//
// Limits enforced, and nothing else:
//   - RLIMIT_NOFILE: soft and hard limit min(Berth's hard limit, 65536), set
//     right after start.
//   - Only when Config.CgroupDir names a delegated cgroup v2 directory: each
//     backend runs in its own cgroup CgroupDir/<id>, entered atomically at
//     clone (CLONE_INTO_CGROUP), with memory.max from resources.memory_mb
//     (swap is not limited), cpu.max from resources.cpu_millis and pids.max
//     from resources.pids, for each controller enabled in CgroupDir's
//     cgroup.subtree_control (a limit whose controller is missing is logged
//     and skipped). Stop then also kills through cgroup.kill, which reaches
//     processes that left the process group, and Wait reports OOMKilled from
//     memory.events.
//
// Without CgroupDir, memory, CPU and pid limits are not enforced. RLIMIT_AS
// is deliberately not used: Go, JVM and V8 programs reserve far more address
// space than they use and fail under it. RLIMIT_NPROC counts every process
// of the user, not of one backend, so it cannot bound a backend either.
package process

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/runtime"
	"golang.org/x/sys/unix"
)

// Name is the runtime's name in records.
const Name = "process"

const (
	handleFile         = "handle.json"
	logFile            = "output.log"
	defaultMaxLogBytes = 8 << 20
	maxOpenFiles       = 65536
	// killTimeout bounds how long Stop waits for a SIGKILLed group to empty.
	killTimeout = 10 * time.Second
	defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// errUnknownExit is the Exit.Err of a recovered backend: only a process's
// parent learns its exit status, and after a restart Berth is not the parent.
var errUnknownExit = errors.New("process: exit status unknown: the backend was recovered after a restart of Berth, which is therefore not its parent")

var (
	_ runtime.Runtime     = (*Runtime)(nil)
	_ runtime.Lister      = (*Runtime)(nil)
	_ runtime.LateStarter = (*Runtime)(nil)
)

// Config configures the process runtime.
type Config struct {
	// Dir holds one directory per backend. Required; created if missing.
	Dir    string
	Logger *slog.Logger
	// MaxLogBytes bounds the disk a backend's output log takes while the
	// runtime tails it. Default 8 MiB.
	MaxLogBytes int64
	// CgroupDir, when set, is a cgroup v2 directory delegated to Berth: it
	// must be writable, hold no processes itself, and have the controllers to
	// enforce (memory, cpu, pids) in its cgroup.subtree_control. Empty means
	// no cgroups, and no memory, CPU or pid limits.
	CgroupDir string
	// DieWithBerth kills every backend (SIGKILL) when the Berth process
	// ends, however it ends. A replica sets it: a replica killed while its
	// host runs on must not leave backends running that another replica
	// may replace once its lease expires. One Berth alone leaves it off,
	// so a restarted Berth re-adopts the backends that kept running.
	DieWithBerth bool
	// OnGroup, if set, hears of each backend's process group: running when
	// Start made it, not running once Cleanup let it go. A replica's
	// reaper kills the groups of a Berth that died (the parent-death
	// signal reaches only the process Berth forked, not what that one
	// started in its group).
	OnGroup func(pgid int, running bool)
}

// Validate checks the config.
func (c *Config) Validate() error {
	if c.Dir == "" {
		return errors.New("process: Dir is required")
	}
	if c.MaxLogBytes < 0 {
		return errors.New("process: MaxLogBytes must not be negative")
	}
	if c.CgroupDir != "" {
		if err := checkCgroupDir(c.CgroupDir); err != nil {
			return fmt.Errorf("process: CgroupDir: %w", err)
		}
	}
	return nil
}

// Runtime runs backends as local process groups.
type Runtime struct {
	dir       string
	cgroupDir string
	maxLog    int64
	log       *slog.Logger
	watch     watcher       // shared by the tails
	forks     chan<- func() // the forker's (DieWithBerth), or nil
	onGroup   func(pgid int, running bool)

	mu        sync.Mutex
	insts     map[string]*instance // by backend id, until Cleanup
	spares    []string             // backend directories ready for Start (see park)
	nextSpare uint64
	closed    bool // no more spares: Close removed them
}

var _ io.Closer = (*Runtime)(nil)

// Close removes the spare directories, so a stopped Berth leaves nothing in
// Dir but the directories of backends still running (which keep running;
// a new Runtime recovers them). Cleanups after Close remove a backend's
// directory instead of parking it.
func (r *Runtime) Close() error {
	r.mu.Lock()
	spares := r.spares
	r.spares, r.closed = nil, true
	r.mu.Unlock()
	var errs []error
	for _, s := range spares {
		if err := os.RemoveAll(s); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// New returns a process runtime keeping its files under cfg.Dir.
func New(cfg Config) (*Runtime, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("process: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("process: %w", err)
	}
	// Resolved, as the kernel reports a working directory (find.go).
	if dir, err = filepath.EvalSymlinks(dir); err != nil {
		return nil, fmt.Errorf("process: %w", err)
	}
	if err := removeSpares(dir); err != nil {
		return nil, fmt.Errorf("process: %w", err)
	}
	r := &Runtime{dir: dir, cgroupDir: cfg.CgroupDir, maxLog: cfg.MaxLogBytes, log: cfg.Logger, insts: make(map[string]*instance),
		onGroup: cfg.OnGroup}
	if cfg.DieWithBerth {
		r.forks = startForker()
	}
	if r.maxLog == 0 {
		r.maxLog = defaultMaxLogBytes
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if r.cgroupDir == "" {
		r.log.Info("memory, CPU and pid limits are not enforced for process backends; set a delegated cgroup v2 directory to enforce them")
	}
	return r, nil
}

// Name returns "process".
func (r *Runtime) Name() string { return Name }

// Caps implements runtime.Runtime: commands, never images (a spawn with an
// image goes to a container runtime), freezing, and every state mode.
func (r *Runtime) Caps() runtime.Caps {
	return runtime.Caps{Commands: true, Freeze: true,
		StateModes: []berth.StateMode{berth.StateModeBlob, berth.StateModeDir, berth.StateModeVolume}}
}

// StartSettle implements runtime.LateStarter. A child that a Berth killed
// meanwhile had forked but that had not yet reached its chdir to work/
// carries nothing of its backend (see find.go); on a loaded machine it may
// wait that long for a CPU, and once it runs it is identifiable within
// microseconds.
func (r *Runtime) StartSettle() time.Duration { return 2 * time.Second }

// FreePort returns a TCP port on 127.0.0.1 that is free right now, for a
// process backend to listen on.
func FreePort() (int, error) {
	lo, hi := portRange()
	n := hi - lo + 1
	for range 200 {
		port := lo + int(nextPort.Add(1)%uint32(n))
		if canBind(port) {
			return port, nil
		}
	}
	return 0, fmt.Errorf("process: no free port between %d and %d", lo, hi)
}

// canBind reports whether a TCP socket can bind 127.0.0.1:port, as a server
// does (SO_REUSEADDR): three system calls, where net.Listen takes about
// twice as many and registers the socket with the poller.
func canBind(port int) bool {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return false
	}
	return unix.Bind(fd, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}) == nil
}

// nextPort rotates through the backend port range, from a random start, so
// a port is reused as late as possible.
var nextPort = func() *atomic.Uint32 {
	var a atomic.Uint32
	a.Store(uint32(mrand.IntN(1 << 16)))
	return &a
}()

// portRange is where backend ports come from: below the kernel's ephemeral
// range, so no outgoing connection on the machine takes a port between the
// moment Berth picks it and the moment the backend binds it. It is read
// once: FreePort runs on every spawn.
var portRange = sync.OnceValues(readPortRange)

// PortRange is the range, inclusive, that FreePort draws backend ports
// from; whatever else picks loopback ports on the machine (tests) keeps
// out of it.
func PortRange() (lo, hi int) { return portRange() }

func readPortRange() (lo, hi int) {
	lo, hi = 20000, 32767
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return lo, hi
	}
	var eLo, eHi int
	if _, err := fmt.Sscan(string(b), &eLo, &eHi); err != nil {
		return lo, hi
	}
	switch {
	case eLo > 12000:
		hi = eLo - 1
		lo = max(1024, hi-12767)
	case eHi < 60000:
		lo, hi = eHi+1, min(65535, eHi+12768)
	}
	return lo, hi
}

// state is what Handle.State holds.
type state struct {
	PID  int `json:"pid"`
	PGID int `json:"pgid"`
	// Start is field 22 of /proc/<pid>/stat, so a reused pid is told apart.
	Start  uint64 `json:"start_time"`
	Log    string `json:"log"`
	Cgroup string `json:"cgroup,omitempty"`
}

// Start runs spec's command in a new session, and so a new process group.
func (r *Runtime) Start(ctx context.Context, spec runtime.Spec) (*runtime.Handle, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	id := spec.BackendID
	if err := checkID(id); err != nil {
		return nil, err
	}
	if len(spec.Spawn.Command) == 0 {
		return nil, fmt.Errorf("process: start %s: the spawn has no command", id)
	}
	if spec.Port <= 0 {
		return nil, fmt.Errorf("process: start %s: no port", id)
	}
	r.mu.Lock()
	running := r.insts[id] != nil && !r.insts[id].finished()
	r.mu.Unlock()
	if running {
		return nil, fmt.Errorf("process: start %s: already running", id)
	}
	log := r.log.With("backend", id)
	base := filepath.Join(r.dir, id)
	work := filepath.Join(base, "work")
	if !r.takeSpare(base) {
		// Dir exists (New made it): two mkdir calls, not MkdirAll's
		// stats first.
		for _, d := range []string{base, work} {
			if err := os.Mkdir(d, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return nil, fmt.Errorf("process: start %s: %w", id, err)
			}
		}
	}
	h, err := r.start(spec, base, work, log)
	if err != nil {
		os.RemoveAll(base)
		return nil, fmt.Errorf("process: start %s: %w", id, err)
	}
	return h, nil
}

func (r *Runtime) start(spec runtime.Spec, base, work string, log *slog.Logger) (*runtime.Handle, error) {
	args := berth.ExpandArgs(spec.Spawn.Command, spec.Env)
	path, err := program(args[0])
	if err != nil {
		return nil, err
	}
	logPath := filepath.Join(base, logFile)
	out, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer out.Close() // the child has its own copy
	null, err := devNull()
	if err != nil {
		return nil, err
	}
	// A session, not only a group: a group whose parent (Berth) is in its
	// session becomes orphaned when Berth dies, and the kernel then sends
	// SIGHUP (and SIGCONT) to it if a member is stopped, killing a backend
	// frozen by SIGSTOP (freeze.go) with its unsaved memory. A group in a
	// session of its own is orphaned from the start: no such signal comes.
	cmd := &exec.Cmd{
		Path:        path,
		Args:        args,
		Dir:         work,
		Env:         environ(spec, work),
		Stdin:       null,
		Stdout:      out,
		Stderr:      out,
		SysProcAttr: &syscall.SysProcAttr{Setsid: true}, // see above
	}
	if spec.VolumeLock != "" {
		lock, err := lockVolume(spec.VolumeLock)
		if err != nil {
			return nil, err
		}
		defer lock.Close() // the backend holds the lock through its own copy
		cmd.ExtraFiles = []*os.File{lock}
	}
	var cg string
	if r.cgroupDir != "" {
		var fd int
		cg, fd, err = makeCgroup(r.cgroupDir, spec.BackendID, spec.Spawn.Resources, log)
		if err != nil {
			return nil, fmt.Errorf("create cgroup: %w", err)
		}
		defer unix.Close(fd)
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, fd
	}
	if r.forks != nil {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	if err := r.startCmd(cmd); err != nil {
		if cg != "" {
			removeCgroup(cg, spec.BackendID)
		}
		return nil, err
	}
	pid := cmd.Process.Pid
	h := &runtime.Handle{BackendID: spec.BackendID, Runtime: Name, Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(spec.Port))}
	st := state{PID: pid, PGID: pid, Log: logPath, Cgroup: cg}
	// Until cmd.Wait reaps it, pid (and so the group) cannot name another
	// process, so a failure here can kill the group outright.
	if err := r.record(h, &st, base); err != nil {
		unix.Kill(-pid, unix.SIGKILL)
		cmd.Wait()
		if cg != "" {
			removeCgroup(cg, spec.BackendID)
		}
		return nil, err
	}
	inst := newInstance(st)
	inst.child = true
	inst.follow(spec.Logs, r, log) // before it can end, so no output is missed
	go func() {
		err := cmd.Wait()
		inst.reaped.Store(true)
		inst.finish(exitOf(err, cmd.ProcessState))
	}()
	r.mu.Lock()
	r.insts[spec.BackendID] = inst
	r.mu.Unlock()
	if r.onGroup != nil {
		r.onGroup(pid, true)
	}
	log.Debug("started", "pid", pid, "command", args)
	return h, nil
}

// record completes st for the started process, limits it, and writes the
// handle to disk for List.
func (r *Runtime) record(h *runtime.Handle, st *state, base string) error {
	s, err := readStat(st.PID)
	if err != nil {
		return err
	}
	st.Start = s.start
	if err := limitFiles(st.PID); err != nil {
		return err
	}
	if h.State, err = json.Marshal(st); err != nil {
		return err
	}
	return writeHandle(filepath.Join(base, handleFile), h)
}

// lockVolume opens and locks a volume's lock file (Spec.VolumeLock). The
// backend inherits the descriptor, as its file descriptor 3, and with it
// the lock (flock(2) locks belong to the open file, which every process of
// the backend that keeps the descriptor shares), so the kernel releases the
// lock only once the last of them has exited — however Berth fares
// meanwhile.
func lockVolume(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open the volume lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if err == unix.EWOULDBLOCK {
			return nil, fmt.Errorf("%w: a process holds %s", runtime.ErrVolumeBusy, path)
		}
		return nil, fmt.Errorf("lock the volume: %w", err)
	}
	return f, nil
}

// program resolves the command's program. A relative path is relative to
// Berth's working directory (where `berth dev` runs), not the backend's.
func program(name string) (string, error) {
	if strings.ContainsRune(name, '/') {
		return filepath.Abs(name)
	}
	return exec.LookPath(name)
}

// environ is a minimal base environment, then spec.Env, which may override
// it; Berth's own environment does not leak into backends.
func environ(spec runtime.Spec, work string) []string {
	path := os.Getenv("PATH")
	if path == "" {
		path = defaultPath
	}
	env := []string{"PATH=" + path, "HOME=" + work, "TMPDIR=" + work}
	for _, k := range slices.Sorted(maps.Keys(spec.Env)) {
		env = append(env, k+"="+spec.Env[k])
	}
	if spec.StateDir != "" {
		env = append(env, "BERTH_STATE_DIR="+spec.StateDir)
	}
	return env
}

// devNull is the backends' stdin, opened once for all of them (exec.Cmd
// would open and close /dev/null on every start).
var devNull = sync.OnceValues(func() (*os.File, error) { return os.Open(os.DevNull) })

// fileLimit is what limitFiles sets when a child inherited Berth's own hard
// limit, as it does: min(that hard limit, maxOpenFiles); 0 if unknown.
var fileLimit = sync.OnceValue(func() uint64 {
	var own unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &own); err != nil {
		return 0
	}
	return min(own.Max, maxOpenFiles)
})

// limitFiles caps the open files of pid at min(its hard limit, maxOpenFiles).
func limitFiles(pid int) error {
	// One call when the child's hard limit is Berth's own, as inherited.
	if n := fileLimit(); n > 0 && unix.Prlimit(pid, unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: n, Max: n}, nil) == nil {
		return nil
	}
	var cur unix.Rlimit
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, nil, &cur); err != nil {
		return fmt.Errorf("read RLIMIT_NOFILE: %w", err)
	}
	n := min(cur.Max, maxOpenFiles)
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: n, Max: n}, nil); err != nil {
		return fmt.Errorf("set RLIMIT_NOFILE: %w", err)
	}
	return nil
}

func exitOf(err error, ps *os.ProcessState) runtime.Exit {
	if ps == nil {
		return runtime.Exit{Code: -1, Err: err}
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return runtime.Exit{Code: -1, Signal: unix.SignalName(ws.Signal())}
	}
	return runtime.Exit{Code: ps.ExitCode()}
}

// Wait blocks until the backend exits. For a backend recovered after a
// restart the exit code is unknown: Code is -1 and Err says why.
func (r *Runtime) Wait(ctx context.Context, h *runtime.Handle) (runtime.Exit, error) {
	inst, err := r.instance(h)
	if err != nil {
		return runtime.Exit{Code: -1, Err: err, At: time.Now()}, err
	}
	select {
	case <-inst.done:
		if errors.Is(inst.exit.Err, runtime.ErrGone) {
			return inst.exit, runtime.ErrGone
		}
		return inst.exit, nil
	case <-ctx.Done():
		return runtime.Exit{}, ctx.Err()
	}
}

// Stop signals the backend's process group, waits up to grace for it to
// exit, then kills the group.
func (r *Runtime) Stop(ctx context.Context, h *runtime.Handle, signal string, grace time.Duration) error {
	sig, err := parseSignal(signal)
	if err != nil {
		return err
	}
	inst, err := r.instance(h)
	if err != nil {
		return err
	}
	if grace > 0 && sig != unix.SIGKILL {
		if err := inst.signal(sig); err != nil {
			return fmt.Errorf("process: stop %s: %w", h.BackendID, err)
		}
		t := time.NewTimer(grace)
		defer t.Stop()
		select {
		case <-inst.done:
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err := inst.kill(ctx); err != nil {
		return fmt.Errorf("process: stop %s: %w", h.BackendID, err)
	}
	return nil
}

func parseSignal(name string) (unix.Signal, error) {
	if name == "" {
		return unix.SIGTERM, nil
	}
	n, ok := berth.Signals[strings.ToUpper(name)]
	if !ok {
		return 0, fmt.Errorf("process: unknown signal %q", name)
	}
	return unix.Signal(n), nil
}

// Recover re-attaches to a backend after a restart and tails its output log
// from the start, so logs may repeat what an earlier Berth already captured.
func (r *Runtime) Recover(ctx context.Context, h *runtime.Handle, logs io.Writer) error {
	inst, err := r.instance(h)
	if err != nil {
		return err
	}
	if !inst.follow(logs, r, r.log.With("backend", h.BackendID)) {
		return runtime.ErrGone
	}
	return nil
}

// Cleanup removes the backend's directory and cgroup. It refuses while the
// backend still runs.
func (r *Runtime) Cleanup(ctx context.Context, h *runtime.Handle) error {
	if err := checkID(h.BackendID); err != nil {
		return err
	}
	st, err := decodeState(h)
	r.mu.Lock()
	inst := r.insts[h.BackendID]
	r.mu.Unlock()
	// An instance that has ended already says the leader is gone.
	if err == nil && (inst == nil || !inst.finished()) && alive(st.PID, st.Start) {
		return fmt.Errorf("process: cleanup %s: still running; stop it first", h.BackendID)
	}
	r.mu.Lock()
	if r.insts[h.BackendID] == inst { // not one a Start of the same id made since
		delete(r.insts, h.BackendID)
	}
	r.mu.Unlock()
	if r.onGroup != nil && err == nil {
		r.onGroup(st.PGID, false)
	}
	if inst != nil {
		select { // let the tail finish before its file goes
		case <-inst.done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if st.Cgroup != "" {
		if err := removeCgroup(st.Cgroup, h.BackendID); err != nil {
			return fmt.Errorf("process: cleanup %s: %w", h.BackendID, err)
		}
	}
	base := filepath.Join(r.dir, h.BackendID)
	if _, err := os.Lstat(base); errors.Is(err, fs.ErrNotExist) {
		return nil // cleaned up before
	}
	// The directory becomes the next backend's (see park), or is removed.
	if err := r.park(base); err != nil {
		return fmt.Errorf("process: cleanup %s: %w", h.BackendID, err)
	}
	return nil
}

// List returns the handle of every backend under Dir not yet cleaned up,
// whether it still runs or not, and of every backend whose Start was cut
// short before it wrote the handle (a Berth killed meanwhile) but whose
// processes run (see find.go).
func (r *Runtime) List(ctx context.Context) ([]*runtime.Handle, error) {
	ents, err := os.ReadDir(r.dir)
	if err != nil {
		return nil, fmt.Errorf("process: list: %w", err)
	}
	var hs []*runtime.Handle
	unrecorded := make(map[string]bool)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") || !e.IsDir() {
			continue // a spare (see park); backend ids never start with a dot
		}
		b, err := os.ReadFile(filepath.Join(r.dir, e.Name(), handleFile))
		if errors.Is(err, fs.ErrNotExist) || (err == nil && len(b) == 0) {
			unrecorded[e.Name()] = true
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("process: list: %w", err)
		}
		// The first JSON value only: see writeHandle.
		var h runtime.Handle
		if err := json.NewDecoder(bytes.NewReader(b)).Decode(&h); err != nil {
			r.log.Warn("unreadable handle; looking for the backend's processes", "file", filepath.Join(r.dir, e.Name(), handleFile), "err", err)
			unrecorded[e.Name()] = true
			continue
		}
		if h.BackendID != e.Name() {
			unrecorded[e.Name()] = true // a spare's last handle: this backend's was never written
			continue
		}
		hs = append(hs, &h)
	}
	return append(hs, r.findUnrecorded(unrecorded)...), nil
}

// writeHandle writes the handle over whatever the file holds (in a spare,
// the last backend's handle; see park) and cuts the file to its length:
// rewriting in place costs a few microseconds where emptying a file and
// filling it again costs a block freed and allocated, hundreds of
// microseconds on ext4. No temporary file and rename: a List beside a
// Start (a sweep) that reads a handle being written sees another backend's
// handle or none, and looks for the backend's processes instead (find.go);
// List reads only the first JSON value, so a crash between the write and
// the cut still leaves this handle.
func writeHandle(path string, h *runtime.Handle) error {
	b, err := json.Marshal(h)
	if err != nil {
		return err
	}
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return &fs.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	if n, err := unix.Pwrite(fd, b, 0); err != nil || n != len(b) {
		if err == nil {
			err = io.ErrShortWrite
		}
		return &fs.PathError{Op: "write", Path: path, Err: err}
	}
	if err := unix.Ftruncate(fd, int64(len(b))); err != nil {
		return &fs.PathError{Op: "truncate", Path: path, Err: err}
	}
	return nil
}

func checkID(id string) error {
	// No leading dot: such names in Dir are the runtime's own (spares).
	if id == "" || id[0] == '.' || strings.ContainsAny(id, "/\x00") {
		return fmt.Errorf("process: backend id %q cannot name a directory", id)
	}
	return nil
}

func decodeState(h *runtime.Handle) (state, error) {
	var st state
	if err := json.Unmarshal(h.State, &st); err != nil {
		return st, fmt.Errorf("process: handle of %s: %w", h.BackendID, err)
	}
	// Never let a bad handle turn kill(-pgid) into kill(0) or kill(-1).
	if st.PID <= 1 || st.PGID <= 1 {
		return st, fmt.Errorf("process: handle of %s names no process", h.BackendID)
	}
	return st, nil
}

// instance returns the instance h names: the one this Runtime started or
// attached to, or else a new attachment to the running process. An
// attachment to a process that is gone is an instance that has ended, with
// runtime.ErrGone as its Exit.Err.
func (r *Runtime) instance(h *runtime.Handle) (*instance, error) {
	if err := checkID(h.BackendID); err != nil {
		return nil, err
	}
	st, err := decodeState(h)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	inst := r.insts[h.BackendID]
	if inst != nil && inst.st == st {
		return inst, nil
	}
	inst = attach(st)
	if r.insts[h.BackendID] == nil {
		r.insts[h.BackendID] = inst
	}
	return inst, nil
}

// startCmd starts cmd, from the forker's thread when there is one.
func (r *Runtime) startCmd(cmd *exec.Cmd) error {
	if r.forks == nil {
		return cmd.Start()
	}
	done := make(chan error, 1)
	r.forks <- func() { done <- cmd.Start() }
	return <-done
}

// startForker starts a goroutine locked to an OS thread of its own for
// good, and returns where to send it work. A child's parent-death signal
// (Pdeathsig) fires when the thread that forked it ends, not the process:
// Go may end a thread a goroutine was locked to, so backends are forked
// from one that never ends while Berth runs.
func startForker() chan<- func() {
	c := make(chan func())
	go func() {
		goruntime.LockOSThread() // never unlocked: the thread lives as long as Berth
		for f := range c {
			f()
		}
	}()
	return c
}
