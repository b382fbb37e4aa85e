package cli

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berthhq/berth/api"
)

// isTerminal reports whether w is a terminal, where a line may be redrawn.
// A variable so tests can draw the terminal form into a buffer.
var isTerminal = func(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok || os.Getenv("TERM") == "dumb" {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// progress shows a backend's way to ready. On a terminal it is one line,
// redrawn as the state changes and every tick with the time elapsed; piped,
// it is a plain line per state change, for logs and scripts.
type progress struct {
	w     io.Writer
	id    string
	start time.Time
	tty   bool

	mu     sync.Mutex
	state  string // the current state, as shown
	change string // the last change, with its reason and message
	drawn  bool   // a live line is on the terminal

	done chan struct{}
	wg   sync.WaitGroup
}

// progressTick is how often the live line's elapsed time is redrawn.
const progressTick = 100 * time.Millisecond

func newProgress(w io.Writer, id string, start time.Time) *progress {
	return &progress{w: w, id: id, start: start, tty: isTerminal(w), done: make(chan struct{})}
}

// run starts redrawing the live line, on a terminal; stop ends it.
func (p *progress) run() {
	if !p.tty {
		return
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(progressTick)
		defer t.Stop()
		for {
			select {
			case <-p.done:
				return
			case now := <-t.C:
				p.mu.Lock()
				p.draw(now)
				p.mu.Unlock()
			}
		}
	}()
}

// stop ends the redraws and clears the live line, so what is printed next
// starts on a clean line.
func (p *progress) stop() {
	close(p.done)
	p.wg.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.drawn {
		fmt.Fprint(p.w, "\r\x1b[K")
		p.drawn = false
	}
}

// event shows one state change.
func (p *progress) event(e api.StateEvent) {
	p.mu.Lock()
	defer p.mu.Unlock()
	change := string(e.State)
	if p.state != "" {
		change = fmt.Sprintf("%s → %s", p.state, e.State)
	}
	if r := reasonText(e.Reason, e.ExitCode); r != "" {
		change += "  " + r
	}
	if e.Message != "" {
		change += "  " + e.Message
	}
	p.state, p.change = string(e.State), change
	if p.tty {
		p.draw(time.Now())
		return
	}
	fmt.Fprintf(p.w, "%8.3fs  %s\n", time.Since(p.start).Seconds(), change)
}

// spinner turns once a second on the live line, so it shows Berth is
// still waiting even between state changes.
var spinner = []rune("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏")

// draw redraws the live line; p.mu is held.
func (p *progress) draw(now time.Time) {
	if p.state == "" {
		return
	}
	fmt.Fprint(p.w, p.line(now.Sub(p.start)))
	p.drawn = true
}

// line is the live line after elapsed: back to the line's start, clear it,
// then spinner, backend, last change and time.
func (p *progress) line(elapsed time.Duration) string {
	s := spinner[int(elapsed/progressTick)%len(spinner)]
	return fmt.Sprintf("\r\x1b[K%c %s  %s  %.1fs", s, p.id, p.change, elapsed.Seconds())
}
