// Package logs keeps each backend's recent stdout and stderr in memory, bounded
// per backend, so the control API can serve it and follow it live.
//
// Writers are the runtimes' output pumps, which sit on hot paths: a write
// never waits for a reader and never starts a goroutine. Followers keep their
// own position and catch up from the buffer; one that falls behind by more
// than the buffer holds is told how much it missed instead of slowing anyone
// down. The package keeps nothing on disk and must never block a backend's
// output.
package logs

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"

	"github.com/berthhq/berth"
)

// Config bounds the memory a Store uses.
type Config struct {
	// MaxBytes is how much of each backend's newest output is kept
	// (default 1 MiB).
	MaxBytes int
	// Retain is how many finished backends' logs are kept, oldest evicted
	// first (default 1000). Live backends' logs are never evicted.
	Retain int
	// RetainBytes bounds the memory of finished backends' logs in all
	// (default 64 MiB), oldest evicted first: without it, Retain logs of
	// MaxBytes each could hold a gigabyte.
	RetainBytes int
}

const (
	defaultMaxBytes    = 1 << 20
	defaultRetain      = 1000
	defaultRetainBytes = 64 << 20
	// chunkSize bounds how much a follower copies per turn under a log's
	// lock, so a reader of a full buffer holds writers up for microseconds.
	chunkSize = 32 << 10
)

// Validate reports a negative field; zero means the default.
func (c Config) Validate() error {
	if c.MaxBytes < 0 {
		return &berth.FieldError{Field: "max_bytes", Message: "must not be negative"}
	}
	if c.Retain < 0 {
		return &berth.FieldError{Field: "retain", Message: "must not be negative"}
	}
	if c.RetainBytes < 0 {
		return &berth.FieldError{Field: "retain_bytes", Message: "must not be negative"}
	}
	return nil
}

// Store holds the logs of every backend. Its methods are safe for concurrent use.
type Store struct {
	maxBytes    int
	retain      int
	retainBytes int

	mu   sync.Mutex
	logs map[string]*log
	// finished lists finished backends' logs, oldest first, for eviction,
	// with their sizes when they finished (output still draining after
	// Finish is not counted), which add up to finishedBytes.
	finished      []finishedLog
	finishedBytes int
}

type finishedLog struct {
	id   string
	size int
}

// New returns an empty Store. Zero or negative fields of cfg take their defaults.
func New(cfg Config) *Store {
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = defaultMaxBytes
	}
	if cfg.Retain <= 0 {
		cfg.Retain = defaultRetain
	}
	if cfg.RetainBytes <= 0 {
		cfg.RetainBytes = defaultRetainBytes
	}
	return &Store{maxBytes: cfg.MaxBytes, retain: cfg.Retain, retainBytes: cfg.RetainBytes, logs: make(map[string]*log)}
}

// Open registers an empty log for id, if it has none yet, so that followers
// can attach before the backend prints anything.
func (s *Store) Open(id string) { s.open(id) }

func (s *Store) open(id string) *log {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.logs[id]
	if l == nil {
		l = &log{max: s.maxBytes}
		s.logs[id] = l
	}
	return l
}

// Writer returns an io.Writer that appends to id's log, registering it if
// needed. Writes never fail and never block on readers. The writer stays
// bound to this log: output written after the log was evicted is discarded.
func (s *Store) Writer(id string) io.Writer { return s.open(id) }

// Finish marks id's output as complete: followers drain what is left and
// return. The log stays readable until Retain newer logs have finished, or
// newer ones need its share of RetainBytes. Finishing an unknown or
// already finished id does nothing.
func (s *Store) Finish(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.logs[id]
	if l == nil {
		return
	}
	size, ok := l.finish()
	if !ok {
		return
	}
	s.finished = append(s.finished, finishedLog{id, size})
	s.finishedBytes += size
	for len(s.finished) > s.retain || s.finishedBytes > s.retainBytes && len(s.finished) > 1 {
		old := s.finished[0]
		delete(s.logs, old.id)
		s.finishedBytes -= old.size
		s.finished[0] = finishedLog{} // let the id string be collected
		s.finished = s.finished[1:]
	}
}

// Copy writes id's buffered output to w. With follow it then keeps writing
// new output as it arrives, flushing w if it is an http.Flusher, until the
// log is finished (nil) or ctx is done (ctx.Err()). A follower that fell
// further behind than the buffer holds gets a "[… N bytes dropped]" line
// where output is missing. Copy returns berth.ErrNotFound if id has no log
// (never opened, or evicted), and w's error if a write fails.
func (s *Store) Copy(ctx context.Context, id string, follow bool, w io.Writer) error {
	s.mu.Lock()
	l := s.logs[id]
	s.mu.Unlock()
	if l == nil {
		return fmt.Errorf("logs of %s: %w", id, berth.ErrNotFound)
	}
	flusher, _ := w.(http.Flusher)

	// pos is the absolute offset of the next byte this reader wants. It
	// starts at the oldest byte kept: history trimmed before the reader came
	// is not reported as dropped, only what it misses while reading is.
	// Without follow, stop is the end as of now, so that a chatty backend
	// cannot keep a plain read going forever.
	l.mu.Lock()
	pos, stop := l.base, int64(-1)
	if !follow {
		stop = l.end()
	}
	l.mu.Unlock()
	chunk := make([]byte, 0, chunkSize)
	for {
		var (
			dropped int64
			wake    <-chan struct{}
			done    bool
		)
		chunk, pos, dropped, wake, done = l.read(pos, stop, chunk[:0])
		if dropped > 0 {
			if _, err := fmt.Fprintf(w, "[… %d bytes dropped]\n", dropped); err != nil {
				return err
			}
		}
		if len(chunk) > 0 {
			if _, err := w.Write(chunk); err != nil {
				return err
			}
		}
		if done {
			return nil
		}
		if wake == nil {
			continue // more is buffered already
		}
		if flusher != nil {
			flusher.Flush() // once caught up, not after every chunk
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-wake:
		}
	}
}

// log is one backend's output: the newest max bytes, as data[head:].
//
// Keeping a dead prefix (head) and compacting only when the slice is full
// makes trimming free and copying amortised O(1) per byte written, at the
// cost of up to twice max bytes of capacity while the backend runs. A ring
// would save that half but make every read and line search wrap around.
type log struct {
	max int

	mu   sync.Mutex
	data []byte
	head int
	// base is the absolute offset (bytes ever written) of data[head].
	base int64
	done bool
	// wake is closed, and cleared, on the next write or finish. Followers
	// create it only when they have caught up, so writes with no one
	// following allocate nothing.
	wake chan struct{}
}

func (l *log) end() int64 { return l.base + int64(len(l.data)-l.head) }

func (l *log) Write(p []byte) (int, error) {
	n := len(p)
	if n == 0 {
		return 0, nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()

	if over := len(l.data) - l.head + len(p) - l.max; over > 0 {
		cut := l.lineCut(over, p)
		live := len(l.data) - l.head
		if cut < live {
			l.head += cut
		} else {
			l.data, l.head = l.data[:0], 0
			p = p[cut-live:]
		}
		l.base += int64(cut)
	}
	if len(l.data)+len(p) > cap(l.data) {
		// Compact in place only when that frees at least half the
		// capacity, else reallocate at twice the need (at most 2×max):
		// either way the bytes moved are paid for by as many written since.
		live := l.data[l.head:]
		if need := len(live) + len(p); need <= cap(l.data)/2 {
			l.data = l.data[:copy(l.data, live)]
		} else {
			l.data = append(make([]byte, 0, 2*need), live...)
		}
		l.head = 0
	}
	l.data = append(l.data, p...)
	l.signal()
	return n, nil
}

// lineCut returns how many bytes to drop from the front of data[head:]+p: at
// least need, and further up to the end of the line that straddles the cut,
// so the kept output starts at a line, unless that line is so long that
// aligning would throw away more than a quarter of the buffer.
func (l *log) lineCut(need int, p []byte) int {
	live := l.data[l.head:]
	from, limit := need-1, need+l.max/4 // the byte just before the cut may be the '\n'
	for from < limit {
		var seg []byte
		switch {
		case from < len(live):
			seg = live[from:]
		case from-len(live) < len(p):
			seg = p[from-len(live):]
		default:
			return need
		}
		seg = seg[:min(len(seg), limit-from)]
		if i := bytes.IndexByte(seg, '\n'); i >= 0 {
			return from + i + 1
		}
		from += len(seg)
	}
	return need
}

func (l *log) signal() {
	if l.wake != nil {
		close(l.wake)
		l.wake = nil
	}
}

// finish marks the log done, reporting whether it was live until now and
// the bytes it keeps.
func (l *log) finish() (int, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return 0, false
	}
	l.done = true
	l.signal()
	// A finished log no longer grows: give back the spare capacity.
	if live := len(l.data) - l.head; cap(l.data) > live {
		l.data, l.head = bytes.Clone(l.data[l.head:]), 0
	}
	return len(l.data), true
}

// read appends to buf up to chunkSize bytes of output from absolute offset
// pos (not past stop, if stop ≥ 0) and returns it with the reader's next
// position and how many bytes it missed because they were trimmed. When
// there is nothing more to read now, it says whether the reader is done or
// returns a channel that is closed when there may be more.
func (l *log) read(pos, stop int64, buf []byte) (_ []byte, next, dropped int64, wake <-chan struct{}, done bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if pos < l.base {
		dropped, pos = l.base-pos, l.base
	}
	end := l.end()
	if stop >= 0 {
		end = min(end, stop)
	}
	if pos < end {
		from := l.head + int(pos-l.base)
		n := min(int(end-pos), chunkSize)
		buf = append(buf, l.data[from:from+n]...)
		pos += int64(n)
	}
	switch {
	case pos < end:
		// more to read right away
	case stop >= 0 || l.done:
		done = true
	default:
		if l.wake == nil {
			l.wake = make(chan struct{})
		}
		wake = l.wake
	}
	return buf, pos, dropped, wake, done
}
