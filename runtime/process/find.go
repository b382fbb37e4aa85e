package process

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strconv"

	"github.com/berthhq/berth/runtime"
)

// Finding a backend whose handle was never written.
//
// Start writes handle.json right after the fork, but a Berth killed in
// between (under load that is a window of milliseconds, not microseconds:
// the goroutine may wait for a CPU between the fork and the write) leaves a
// running process group that no handle names. Every such process is still
// identifiable by its backend id alone: Start makes Dir/<id> before the
// fork, and the process carries the id in its environment
// (BERTH_BACKEND_ID, which a spawn cannot override) and, from before its
// exec, its working directory Dir/<id>/work while it still runs Berth's
// own program. With a cgroup directory it is
// also in CgroupDir/<id> from its first instruction (CLONE_INTO_CGROUP).
// List scans /proc for those, once, only when some backend directory has
// no handle of its own, so a normal start pays nothing for it.
//
// What cannot be found at once: a child between the fork and its chdir to
// work/ (a few instructions in the forked child, before exec), when there
// is no cgroup directory; its environment is still Berth's then. On a
// loaded machine it may wait a while for a CPU, so a restarted Berth lists
// again after StartSettle before it calls such a start lost.

// envBackendID is the variable that names a backend in its environment.
const envBackendID = "BERTH_BACKEND_ID="

// findUnrecorded returns a handle for each of ids (backend ids whose
// directory under r.dir has no handle) whose processes still run.
func (r *Runtime) findUnrecorded(ids map[string]bool) []*runtime.Handle {
	if len(ids) == 0 {
		return nil
	}
	found := make(map[string][]proc) // by backend id
	d, err := os.Open("/proc")
	if err != nil {
		return nil
	}
	names, _ := d.Readdirnames(-1)
	d.Close()
	for _, n := range names {
		pid, err := strconv.Atoi(n)
		if err != nil || pid <= 1 {
			continue
		}
		before, err := readStat(pid)
		if err != nil || !before.running() {
			continue
		}
		id, port := r.owner(pid, ids)
		if id == "" {
			continue
		}
		// The same process throughout, not a reused pid.
		s, err := readStat(pid)
		if err != nil || !s.running() || s.start != before.start {
			continue
		}
		found[id] = append(found[id], proc{pid: pid, stat: s, port: port})
	}
	if r.cgroupDir != "" {
		for id := range ids {
			pids, _ := cgroupProcs(filepath.Join(r.cgroupDir, id))
			for _, pid := range pids {
				if s, err := readStat(pid); err == nil && s.running() && !hasPID(found[id], pid) {
					found[id] = append(found[id], proc{pid: pid, stat: s})
				}
			}
		}
	}
	var hs []*runtime.Handle
	for id, ps := range found {
		if h := r.unrecordedHandle(id, ps); h != nil {
			hs = append(hs, h)
		}
	}
	return hs
}

// proc is one process found running for a backend.
type proc struct {
	pid  int
	stat stat
	port string // PORT from its environment, if read
}

func hasPID(ps []proc, pid int) bool {
	for _, p := range ps {
		if p.pid == pid {
			return true
		}
	}
	return false
}

// owner returns which of ids the process pid runs for, and its PORT, or ""
// when none: by BERTH_BACKEND_ID in its environment, else by its working
// directory (set before exec, when the environment is still Berth's).
func (r *Runtime) owner(pid int, ids map[string]bool) (id, port string) {
	p := "/proc/" + strconv.Itoa(pid)
	if env, err := os.ReadFile(p + "/environ"); err == nil {
		id, port = envValue(env, envBackendID), envValue(env, "PORT=")
		if ids[id] {
			return id, port
		}
	}
	// By working directory only a child not yet exec'd: it still runs
	// Berth's own program. Anything else there (a shell an operator left
	// in the directory) is not a backend.
	if !sameFile(p+"/exe", "/proc/self/exe") {
		return "", ""
	}
	cwd, err := os.Readlink(p + "/cwd")
	if err != nil || filepath.Base(cwd) != "work" {
		return "", ""
	}
	base := filepath.Dir(cwd)
	if filepath.Dir(base) != r.dir || !ids[filepath.Base(base)] {
		return "", ""
	}
	return filepath.Base(base), ""
}

// envValue returns the value of the variable whose "NAME=" is name in a
// NUL-separated environment block.
func envValue(env []byte, name string) string {
	for len(env) > 0 {
		var kv []byte
		kv, env, _ = bytes.Cut(env, []byte{0})
		if v, ok := bytes.CutPrefix(kv, []byte(name)); ok {
			return string(v)
		}
	}
	return ""
}

// unrecordedHandle builds the handle Start would have written for backend
// id from its running processes: the group leader's if it runs, else the
// oldest process's group.
func (r *Runtime) unrecordedHandle(id string, ps []proc) *runtime.Handle {
	lead := ps[0]
	for _, p := range ps[1:] {
		switch {
		case lead.pid == lead.stat.pgid:
		case p.pid == p.stat.pgid, p.stat.start < lead.stat.start:
			lead = p
		}
	}
	if lead.stat.pgid <= 1 {
		return nil
	}
	base := filepath.Join(r.dir, id)
	st := state{PID: lead.pid, PGID: lead.stat.pgid, Start: lead.stat.start, Log: filepath.Join(base, logFile)}
	if r.cgroupDir != "" {
		if cg := filepath.Join(r.cgroupDir, id); isDir(cg) {
			st.Cgroup = cg
		}
	}
	raw, err := json.Marshal(st)
	if err != nil {
		return nil
	}
	h := &runtime.Handle{BackendID: id, Runtime: Name, State: raw}
	for _, p := range ps {
		if p.port != "" {
			h.Addr = net.JoinHostPort("127.0.0.1", p.port)
			break
		}
	}
	return h
}

// sameFile reports whether the two paths name one file (device and inode).
func sameFile(a, b string) bool {
	fa, err := os.Stat(a)
	if err != nil {
		return false
	}
	fb, err := os.Stat(b)
	return err == nil && os.SameFile(fa, fb)
}

func isDir(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.IsDir()
}
