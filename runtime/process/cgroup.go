package process

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"

	"github.com/berthhq/berth"
	"golang.org/x/sys/unix"
)

// cpuPeriod is the cpu.max period in microseconds; the quota is a share of it.
const cpuPeriod = 100_000

// checkCgroupDir reports whether dir is a writable directory of a cgroup v2
// hierarchy.
func checkCgroupDir(dir string) error {
	var sfs unix.Statfs_t
	if err := unix.Statfs(dir, &sfs); err != nil {
		return err
	}
	if sfs.Type != unix.CGROUP2_SUPER_MAGIC {
		return fmt.Errorf("%s is not in a cgroup v2 hierarchy", dir)
	}
	if err := unix.Access(dir, unix.W_OK); err != nil {
		return fmt.Errorf("%s is not writable: %w", dir, err)
	}
	return nil
}

// makeCgroup creates the cgroup parent/id, writes the limits res asks for,
// and returns its path with an open descriptor to start the process in it.
// A limit whose controller parent does not delegate is logged, not fatal:
// the process runtime runs anywhere, enforcing what the host allows.
func makeCgroup(parent, id string, res berth.Resources, log *slog.Logger) (string, int, error) {
	dir := filepath.Join(parent, id)
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", -1, err
	}
	limits := []struct {
		file  string
		value int
		quota string
	}{
		{"memory.max", res.MemoryMB, strconv.Itoa(res.MemoryMB << 20)},
		{"cpu.max", res.CPUMillis, fmt.Sprintf("%d %d", max(res.CPUMillis*cpuPeriod/1000, 1000), cpuPeriod)},
		{"pids.max", res.Pids, strconv.Itoa(res.Pids)},
	}
	for _, l := range limits {
		if l.value <= 0 {
			continue
		}
		err := writeCgroup(dir, l.file, l.quota)
		if errors.Is(err, fs.ErrNotExist) {
			log.Warn("limit not enforced: its controller is not in the cgroup.subtree_control of "+parent, "file", l.file)
			continue
		}
		if err != nil {
			os.Remove(dir)
			return "", -1, err
		}
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		os.Remove(dir)
		return "", -1, err
	}
	return dir, fd, nil
}

// writeCgroup writes an existing cgroup control file; unlike os.WriteFile
// it never creates one.
func writeCgroup(dir, file, value string) error {
	f, err := os.OpenFile(filepath.Join(dir, file), os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	return errors.Join(err, f.Close())
}

// cgroupProcs lists the processes in the cgroup dir.
func cgroupProcs(dir string) ([]int, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	var pids []int
	for _, f := range bytes.Fields(b) {
		if pid, err := strconv.Atoi(string(f)); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids, err
}

// oomKilled reports whether the kernel's OOM killer killed a process of the
// cgroup dir.
func oomKilled(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, "memory.events"))
	if err != nil {
		return false
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if n, ok := bytes.CutPrefix(sc.Bytes(), []byte("oom_kill ")); ok {
			return string(n) != "0"
		}
	}
	return false
}

// removeCgroup removes the cgroup dir of backend id, which must be empty of
// processes. It refuses a path that is not a cgroup of that backend.
func removeCgroup(dir, id string) error {
	if filepath.Base(dir) != id || checkCgroupDir(filepath.Dir(dir)) != nil {
		return nil
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
