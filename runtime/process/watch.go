package process

import (
	"encoding/binary"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// watcher tells tails when their log files grow. The tails of a Runtime
// share one inotify instance: the kernel allows few instances per user
// (fs.inotify.max_user_instances, often 128) but many watches. The instance
// and its reading goroutine exist only while some tail watches.
type watcher struct {
	mu   sync.Mutex
	fd   int
	f    *os.File // fd, for the Go poller; nil while nothing is watched
	done chan struct{}
	subs map[int32]chan struct{} // by watch descriptor
}

// watch returns a channel that receives when the file at path is written
// to, and a func that stops watching it.
func (w *watcher) watch(path string) (<-chan struct{}, func(), error) {
	w.mu.Lock()
	if w.f == nil {
		fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
		if err != nil {
			w.mu.Unlock()
			return nil, nil, err
		}
		// Non-blocking, so the Go poller waits for events and Close ends a
		// pending Read. (Never call f.Fd: it would make the file blocking.)
		w.fd, w.f, w.done, w.subs = fd, os.NewFile(uintptr(fd), "inotify"), make(chan struct{}), make(map[int32]chan struct{})
		go w.run(w.f, w.done)
	}
	wd, err := unix.InotifyAddWatch(w.fd, path, unix.IN_MODIFY)
	if err == nil && w.subs[int32(wd)] != nil {
		err = fmt.Errorf("%s is already watched", path)
	}
	if err != nil {
		w.releaseAndUnlock()
		return nil, nil, err
	}
	c := make(chan struct{}, 1)
	w.subs[int32(wd)] = c
	w.mu.Unlock()
	return c, func() { w.unwatch(int32(wd)) }, nil
}

func (w *watcher) unwatch(wd int32) {
	w.mu.Lock()
	delete(w.subs, wd)
	unix.InotifyRmWatch(w.fd, uint32(wd)) // fails if the file is gone; harmless
	w.releaseAndUnlock()
}

// releaseAndUnlock closes the inotify instance once nothing is watched, and
// unlocks w.mu, which the reading goroutine needs to finish.
func (w *watcher) releaseAndUnlock() {
	if len(w.subs) > 0 {
		w.mu.Unlock()
		return
	}
	f, done := w.f, w.done
	w.f = nil
	w.mu.Unlock()
	f.Close()
	<-done
}

func (w *watcher) run(f *os.File, done chan struct{}) {
	defer close(done)
	buf := make([]byte, 64<<10)
	for {
		n, err := f.Read(buf)
		if err != nil {
			return
		}
		w.mu.Lock()
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			wd := int32(binary.NativeEndian.Uint32(buf[off:]))
			off += unix.SizeofInotifyEvent + int(binary.NativeEndian.Uint32(buf[off+12:]))
			select {
			case w.subs[wd] <- struct{}{}:
			default: // already woken, or not watched any more (a nil channel)
			}
		}
		w.mu.Unlock()
	}
}
