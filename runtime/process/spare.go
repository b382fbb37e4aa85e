package process

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Making a backend's directory (two directories and two files) and
// removing it again is most of what a start and a cleanup cost the file
// system, and it is not cheap: each file or directory made is an inode
// allocated, which under churn (hundreds of starts a second) can take tens to
// hundreds of microseconds, notably on ext4 without a journal, which skips
// over every recently freed inode. So Cleanup prepares the next backend's
// directory and parks it as Dir/.spare-N, and Start renames a parked one into
// place (one cheap step, within Dir) and makes its own only when none is
// parked.
//
// What a backend's processes may hold is never handed to another backend: a
// process it left behind (one that escaped its process group) could still
// write to it. So a spare's working directory (also $TMPDIR: one directory
// made per backend, not two) is always new;
// its output log is the last one, truncated, only when no process has it
// open (the kernel grants a write lease only then); and the directory
// around them and the handle file, which no backend process uses, are
// reused.
const (
	sparePrefix = ".spare-"
	maxSpares   = 16
)

// takeSpare moves a parked directory to base and reports whether it did.
func (r *Runtime) takeSpare(base string) bool {
	for {
		r.mu.Lock()
		n := len(r.spares)
		if n == 0 {
			r.mu.Unlock()
			return false
		}
		spare := r.spares[n-1]
		r.spares = r.spares[:n-1]
		r.mu.Unlock()
		if os.Rename(spare, base) == nil {
			return true
		}
		os.RemoveAll(spare) // gone or broken: try the next
	}
}

// park turns the directory of a backend that has exited into a spare, or
// removes it.
func (r *Runtime) park(base string) error {
	r.mu.Lock()
	full := r.closed || len(r.spares) >= maxSpares
	r.nextSpare++
	spare := filepath.Join(r.dir, sparePrefix+strconv.FormatUint(r.nextSpare, 10))
	r.mu.Unlock()
	// Renamed first: from then on a crash leaves a spare, which the next
	// Runtime removes, and never a backend's directory without its handle.
	if full || os.Rename(base, spare) != nil {
		return removeBackendDir(base)
	}
	if !empty(spare) || fillSpare(spare) != nil {
		os.RemoveAll(spare) // base is gone either way: Cleanup is done
		r.addSpare()
		return nil
	}
	return r.keepSpare(spare)
}

// keepSpare parks a ready spare, or removes it if Close came meanwhile.
func (r *Runtime) keepSpare(spare string) error {
	r.mu.Lock()
	closed := r.closed
	if !closed {
		r.spares = append(r.spares, spare)
	}
	r.mu.Unlock()
	if closed {
		return os.RemoveAll(spare)
	}
	return nil
}

// empty removes from base what the backend's processes used (work/, and
// output.log unless it can be reused). It reports whether base then
// holds nothing else, as Start left it. The handle stays: List tells a
// spare's last handle by its backend id, and writeHandle rewrites it in
// place.
func empty(base string) bool {
	log := filepath.Join(base, logFile)
	if !truncateUnused(log) {
		if err := unix.Unlink(log); err != nil && err != unix.ENOENT {
			return false
		}
	}
	d := filepath.Join(base, "work")
	if err := unix.Rmdir(d); err != nil && err != unix.ENOENT {
		if os.RemoveAll(d) != nil {
			return false
		}
	}
	f, err := os.Open(base)
	if err != nil {
		return false
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return false
	}
	for _, name := range names {
		switch name {
		case handleFile: // kept: the next Start writes over it
		case logFile: // truncated above
		default:
			return false
		}
	}
	return true
}

// truncateUnused empties the regular file at path if no process has it open,
// and reports whether it did. A write lease is granted only on a file that
// no other file description refers to, in any process; it is released at
// once (an open by someone else meanwhile would wait for that).
func truncateUnused(path string) bool {
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	// A second link would show the next backend's output elsewhere.
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG || st.Nlink != 1 {
		return false
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETLEASE, unix.F_WRLCK); err != nil {
		return false // open elsewhere, or leases not supported here
	}
	ok := unix.Ftruncate(fd, 0) == nil
	unix.FcntlInt(uintptr(fd), unix.F_SETLEASE, unix.F_UNLCK)
	return ok
}

// addSpare parks a directory made from scratch, unless enough are parked.
func (r *Runtime) addSpare() {
	r.mu.Lock()
	if r.closed || len(r.spares) >= maxSpares {
		r.mu.Unlock()
		return
	}
	r.nextSpare++
	dir := filepath.Join(r.dir, sparePrefix+strconv.FormatUint(r.nextSpare, 10))
	r.mu.Unlock()
	if err := os.Mkdir(dir, 0o700); err != nil {
		return
	}
	if err := fillSpare(dir); err != nil {
		os.RemoveAll(dir)
		return
	}
	r.keepSpare(dir)
}

// fillSpare makes in dir what a backend's processes use: a new work/
// and an empty output log unless dir holds one (see empty).
func fillSpare(dir string) error {
	if err := os.Mkdir(filepath.Join(dir, "work"), 0o700); err != nil {
		return err
	}
	fd, err := unix.Open(filepath.Join(dir, logFile), unix.O_WRONLY|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	return unix.Close(fd)
}

// removeSpares removes the spares an earlier Runtime left in dir: they are
// not worth checking.
func removeSpares(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), sparePrefix) {
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

// removeBackendDir removes a backend's directory. It removes what Start
// made by name first, which usually leaves nothing else, and falls back to
// os.RemoveAll (which lists and stats every entry) only for the rest.
func removeBackendDir(base string) error {
	for _, name := range []string{logFile, handleFile} {
		unix.Unlink(filepath.Join(base, name))
	}
	if err := unix.Rmdir(filepath.Join(base, "work")); err != nil && err != unix.ENOENT {
		return os.RemoveAll(base) // not empty
	}
	if err := unix.Rmdir(base); err == nil || err == unix.ENOENT {
		return nil
	}
	return os.RemoveAll(base)
}
