package process

import (
	"errors"
	"io"
	"log/slog"
	"os"
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
	f    *os.File
	w    io.Writer
	max  int64
	log  *slog.Logger
	stop chan struct{} // closed by close: read what is left, then return
	done chan struct{}
	// punch says whether the file system can punch holes; without it,
	// release falls back to truncating.
	punch bool
}

// startTail follows the file at path from its first byte not yet freed.
func startTail(path string, w io.Writer, max int64, log *slog.Logger) (*tail, error) {
	// Write access is needed to free consumed bytes; nothing is written.
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	// Skip the hole an earlier tail (before a restart) punched.
	if _, err := f.Seek(0, unix.SEEK_DATA); errors.Is(err, unix.ENXIO) {
		f.Seek(0, io.SeekEnd) // all hole, or empty
	}
	t := &tail{f: f, w: w, max: max, log: log, stop: make(chan struct{}), done: make(chan struct{}), punch: true}
	go t.run()
	return t, nil
}

// close stops the tail after copying everything written so far.
func (t *tail) close() {
	close(t.stop)
	<-t.done
}

func (t *tail) run() {
	defer close(t.done)
	defer t.f.Close()
	wake, unwatch, err := notify(t.f.Name())
	longest := maxPollNotify
	if err != nil {
		t.log.Debug("inotify unavailable; polling the log file", "err", err)
		longest = maxPoll
	} else {
		defer unwatch()
	}
	buf := make([]byte, 64<<10)
	off, _ := t.f.Seek(0, io.SeekCurrent)
	freed := off
	poll := minPoll
	timer := time.NewTimer(poll)
	defer timer.Stop()
	for {
		n, err := t.f.Read(buf)
		if n > 0 {
			t.w.Write(buf[:n])
			off += int64(n)
			poll = minPoll
			continue
		}
		if err != nil && err != io.EOF {
			t.log.Error("read output log", "err", err)
			<-t.stop
			return
		}
		if off-freed >= t.max {
			off, freed = t.release(off, freed)
		}
		timer.Reset(poll)
		select {
		case <-t.stop:
			t.drain(buf, off)
			return
		case <-wake:
		case <-timer.C:
			poll = min(2*poll, longest)
		}
	}
}

// drain copies what was written up to now, and no more: a process that
// outlived the backend must not keep the tail busy.
func (t *tail) drain(buf []byte, off int64) {
	fi, err := t.f.Stat()
	if err != nil {
		return
	}
	io.CopyBuffer(t.w, io.LimitReader(t.f, fi.Size()-off), buf)
}

// release frees the consumed bytes before off and returns the new read
// offset and the offset up to which bytes are freed.
func (t *tail) release(off, freed int64) (int64, int64) {
	fd := int(t.f.Fd())
	if t.punch {
		// A hole keeps offsets valid, so a write racing with it is never
		// lost. Whole 64 KiB blocks only, so a reader starting over after a
		// restart (at the first data) never sees zeroed bytes.
		end := off &^ (64<<10 - 1)
		err := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, end)
		if err == nil {
			return off, end
		}
		t.log.Debug("cannot punch holes in the output log; truncating it instead", "err", err)
		t.punch = false
	}
	// Truncating loses a write that lands between the size check and the
	// truncate, a window of microseconds once every max bytes. When the
	// check fails, the next pause in the output tries again.
	if fi, err := t.f.Stat(); err == nil && fi.Size() == off && t.f.Truncate(0) == nil {
		t.f.Seek(0, io.SeekStart)
		return 0, 0
	}
	return off, freed
}

// notify returns a channel that receives when the file at path is written
// to, and a func that stops watching.
func notify(path string) (<-chan struct{}, func(), error) {
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return nil, nil, err
	}
	if _, err := unix.InotifyAddWatch(fd, path, unix.IN_MODIFY); err != nil {
		unix.Close(fd)
		return nil, nil, err
	}
	// Non-blocking, so the Go poller waits for events and Close ends a Read.
	f := os.NewFile(uintptr(fd), "inotify")
	c := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			if _, err := f.Read(buf); err != nil {
				return
			}
			select {
			case c <- struct{}{}:
			default:
			}
		}
	}()
	return c, func() { f.Close(); <-done }, nil
}
