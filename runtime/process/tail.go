package process

import (
	"errors"
	"io"
	"log/slog"
	"math"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Polling bounds for a tail: right after output it looks again within a
// millisecond, backing off while the backend is quiet. With inotify the
// timer is only a safety net.
const (
	minPoll       = time.Millisecond
	maxPoll       = 250 * time.Millisecond
	maxPollNotify = 5 * time.Second
)

// tail copies a log file that a backend appends to into w as it grows.
// Once more than max bytes have been consumed since the last release, it
// frees them on disk, so a chatty backend cannot fill the disk while Berth
// reads its output.
type tail struct {
	f     *os.File
	w     io.Writer
	max   int64
	log   *slog.Logger
	watch *watcher      // nil: poll only
	stop  chan struct{} // closed by close: copy what is there, then return
	done  chan struct{}
	// punch says whether the file system can punch holes; without it,
	// release falls back to truncating.
	punch bool

	// Owned by run.
	off, freed int64 // read offset; bytes before freed are released
}

// tailBufs holds the tails' read buffers: a tail borrows one for a copy,
// so a quiet backend (most of them, most of the time) holds none.
var tailBufs = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// startTail follows the file at path from its first byte not yet freed.
func startTail(path string, w io.Writer, max int64, watch *watcher, log *slog.Logger) (*tail, error) {
	t, err := newTail(path, w, max, watch, log)
	if err != nil {
		return nil, err
	}
	go t.run()
	return t, nil
}

func newTail(path string, w io.Writer, max int64, watch *watcher, log *slog.Logger) (*tail, error) {
	// Write access is needed to free consumed bytes; nothing is written.
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	// Skip the hole an earlier tail (before a restart) punched.
	off, err := f.Seek(0, unix.SEEK_DATA)
	if errors.Is(err, unix.ENXIO) {
		off, err = f.Seek(0, io.SeekEnd) // all hole, or empty
	}
	if err != nil {
		off, _ = f.Seek(0, io.SeekStart)
	}
	return &tail{
		f: f, w: w, max: max, log: log, watch: watch, punch: true,
		stop: make(chan struct{}), done: make(chan struct{}),
		off: off, freed: off,
	}, nil
}

// close stops the tail after copying everything written so far.
func (t *tail) close() {
	close(t.stop)
	<-t.done
}

func (t *tail) run() {
	defer close(t.done)
	defer t.f.Close()
	var wake <-chan struct{}
	longest := maxPoll
	if t.watch != nil {
		c, unwatch, err := t.watch.watch(t.f.Name())
		if err != nil {
			t.log.Debug("inotify unavailable; polling the output log", "err", err)
		} else {
			defer unwatch()
			wake, longest = c, maxPollNotify
		}
	}
	poll := minPoll
	timer := time.NewTimer(poll)
	defer timer.Stop()
	for {
		if t.copy(math.MaxInt64) > 0 {
			poll = minPoll
		}
		select {
		case <-t.stop:
			// Up to the current end and no further: a process that
			// outlived the backend must not keep the tail busy.
			if fi, err := t.f.Stat(); err == nil {
				t.copy(fi.Size() - t.off)
			}
			return
		case <-wake:
		case <-timer.C:
			poll = min(2*poll, longest)
		}
		timer.Reset(poll)
	}
}

// copy copies up to n bytes, or to the end of the file, into w, releasing
// consumed bytes past the bound as it goes. It returns how many it copied.
func (t *tail) copy(n int64) int64 {
	bp := tailBufs.Get().(*[]byte)
	defer tailBufs.Put(bp)
	buf := *bp
	var copied int64
	for copied < n {
		m, err := t.f.Read(buf[:min(int64(len(buf)), n-copied)])
		if m > 0 {
			t.w.Write(buf[:m])
			t.off += int64(m)
			copied += int64(m)
		}
		if t.off-t.freed >= t.max {
			t.release()
		}
		if err != nil && err != io.EOF {
			t.log.Error("read output log", "err", err)
		}
		if m == 0 || err != nil {
			break
		}
	}
	return copied
}

// release frees the consumed bytes before the read offset.
func (t *tail) release() {
	if t.punch {
		// A hole keeps offsets valid, so a write racing with it is never
		// lost. Whole 64 KiB blocks only, so a reader starting over after a
		// restart (at the first data) never sees zeroed bytes.
		end := t.off &^ (64<<10 - 1)
		err := unix.Fallocate(int(t.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, end)
		if err == nil {
			t.freed = end
			return
		}
		t.log.Debug("cannot punch holes in the output log; truncating it instead", "err", err)
		t.punch = false
	}
	// Truncating loses a write that lands between the size check and the
	// truncate, a window of microseconds once every max bytes. The check
	// fails while the backend is writing; the next pause tries again.
	if fi, err := t.f.Stat(); err == nil && fi.Size() == t.off && t.f.Truncate(0) == nil {
		t.off, t.freed = 0, 0
		t.f.Seek(0, io.SeekStart)
	}
}
