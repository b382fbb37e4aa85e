// Package notepad is the demo backend: one shared text document that every
// browser tab connected to the same backend edits live. Open it in two tabs,
// type in one, and watch the other follow.
//
// It is also an example to copy. It listens on $PORT, serves its page and its
// WebSocket under relative URLs (Berth's proxy serves it under /<token>/), and
// exits cleanly on SIGTERM after a final save. It must stay small and must
// never load anything from the network: the page works offline.
package notepad

import (
	"context"
	"crypto/subtle"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"
)

// Config configures Run. Every field is optional.
type Config struct {
	// Addr is where to listen; default ":" + $PORT, or ":8080" if PORT is
	// unset. All interfaces, not loopback, so that it works in a container.
	Addr string
	// Logger receives operational messages; default discards them.
	Logger *slog.Logger
	// Load returns the document to start with. Nil: start empty.
	Load func(ctx context.Context) ([]byte, error)
	// Save receives the document once, at shutdown. Nil: the document
	// lives in memory only.
	Save func(ctx context.Context, text []byte) error
}

const (
	// maxText bounds the document, so one tab cannot make every other
	// tab download megabytes on each keystroke.
	maxText = 1 << 20
	// Shutdown gives open tabs closeTimeout to finish the close handshake,
	// then Save saveTimeout: together well inside Berth's default 10s grace
	// period, after which the process is killed and the save lost.
	closeTimeout = 3 * time.Second
	saveTimeout  = 5 * time.Second
	writeTimeout = 10 * time.Second
)

// Run serves the notepad until ctx is done, then closes every connection,
// saves the document with Save and returns nil. It returns an error if the
// document cannot be loaded, the address cannot be listened on, or the
// final save fails.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Addr == "" {
		port := os.Getenv("PORT")
		if port == "" {
			port = "8080"
		}
		cfg.Addr = ":" + port
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("notepad: %w", err)
	}
	return serve(ctx, ln, cfg, identity{
		BackendID: os.Getenv("BERTH_BACKEND_ID"),
		Key:       os.Getenv("BERTH_KEY"),
		secret:    os.Getenv("BERTH_SECRET"),
	})
}

// identity is what Berth told this backend about itself.
type identity struct {
	BackendID string
	Key       string
	secret    string
}

type server struct {
	log *slog.Logger
	id  identity
	doc doc

	// WebSocket handlers outlive http.Server.Shutdown, which neither
	// waits for nor closes hijacked connections, so the server tracks them:
	// stopping is closed to ask them to say goodbye, and sockets counts
	// them so shutdown can wait. mu orders every Add before the Wait.
	mu       sync.Mutex
	stopped  bool
	stopping chan struct{}
	sockets  sync.WaitGroup
	// connCtx is what socket I/O runs under; kill cancels it to drop the
	// connections that did not close in time.
	connCtx context.Context
	kill    context.CancelFunc
}

func newServer(log *slog.Logger, id identity) *server {
	s := &server{log: log, id: id, stopping: make(chan struct{})}
	s.connCtx, s.kill = context.WithCancel(context.Background())
	s.doc.editors = make(map[*editor]struct{})
	return s
}

// track registers a WebSocket handler, or reports false once stopping.
func (s *server) track() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return false
	}
	s.sockets.Add(1)
	return true
}

// stop asks every WebSocket handler to close its connection, waits up to
// closeTimeout for them, then drops those left.
func (s *server) stop() {
	s.mu.Lock()
	s.stopped = true
	close(s.stopping)
	s.mu.Unlock()
	t := time.AfterFunc(closeTimeout, s.kill)
	s.sockets.Wait()
	t.Stop()
	s.kill()
}

// serve is Run on a given listener, which it closes.
func serve(ctx context.Context, ln net.Listener, cfg Config, id identity) error {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := newServer(log, id)
	if cfg.Load != nil {
		text, err := cfg.Load(ctx)
		if err != nil {
			ln.Close()
			return fmt.Errorf("notepad: load: %w", err)
		}
		s.doc.text = string(text)
	}

	hs := &http.Server{
		Handler:           s.routes(),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()
	log.Info("notepad listening", "addr", ln.Addr().String())

	var err error
	select {
	case <-ctx.Done():
	case err = <-served:
		// The listener failed: still close connections and save.
		err = fmt.Errorf("notepad: serve: %w", err)
	}

	log.Info("notepad shutting down")
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), closeTimeout)
	defer cancel()
	if serr := hs.Shutdown(stopCtx); serr != nil {
		hs.Close() // out of time: drop what is left of plain requests
	}
	s.stop()
	if err == nil {
		<-served // http.ErrServerClosed, now that Shutdown has returned
	}

	// Every reader has ended, so the text saved includes every edit a tab
	// was told was applied.
	if cfg.Save != nil {
		saveCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), saveTimeout)
		defer cancel()
		text := s.doc.snapshot(nil).Text
		if serr := cfg.Save(saveCtx, []byte(text)); serr != nil {
			return errors.Join(err, fmt.Errorf("notepad: save: %w", serr))
		}
		log.Info("notepad saved", "bytes", len(text))
	}
	return err
}

//go:embed index.html
var files embed.FS

var page = template.Must(template.ParseFS(files, "index.html"))

func (s *server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", s.index)
	mux.HandleFunc("GET /ws", s.socket)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /api/doc", s.apiDoc)
	return mux
}

func (s *server) index(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store") // each backend is a new page
	if err := page.Execute(w, s.id); err != nil {
		s.log.Warn("render page", "err", err)
	}
}

// docJSON is the document as GET /api/doc returns it.
type docJSON struct {
	Text    string `json:"text"`
	Version int64  `json:"version"`
	Editors int    `json:"editors"`
}

func (s *server) apiDoc(w http.ResponseWriter, r *http.Request) {
	m := s.doc.snapshot(nil)
	d := docJSON{Text: m.Text, Version: m.Version, Editors: m.Editors}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(d)
}

// Wire messages of the WebSocket at /ws, as JSON text messages.
//
// The document is last-writer-wins: each edit replaces the whole text. So
// that a tab's own edits, echoed back while it keeps typing, do not undo its
// newer keystrokes, a tab numbers its edits (seq) and the server tells each
// tab the last one it applied (ack). A tab applies a remote text only when
// all its edits are acknowledged; by then the server's text is either its
// own or a later writer's, so every tab ends on the same text.
type (
	editMsg struct {
		Seq  int64  `json:"seq"`
		Text string `json:"text"`
	}
	stateMsg struct {
		Text    string `json:"text"`
		Version int64  `json:"version"`
		Editors int    `json:"editors"`
		Ack     int64  `json:"ack"`
	}
)

func (s *server) socket(w http.ResponseWriter, r *http.Request) {
	if !s.track() {
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
		return
	}
	defer s.sockets.Done()

	// Through Berth's proxy the page's origin is Berth's public URL, which
	// this backend cannot know; the proxy has already checked the token and
	// proves it with our secret. Anything else gets the same-origin check.
	proxied := s.id.secret != "" &&
		subtle.ConstantTimeCompare([]byte(r.Header.Get("X-Berth-Secret")), []byte(s.id.secret)) == 1
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: proxied})
	if err != nil {
		return // Accept has answered the request
	}
	defer c.CloseNow()
	// JSON may escape text to several times its length; the decoded text
	// is checked against maxText itself.
	c.SetReadLimit(6*maxText + 1024)

	e := s.doc.join()
	defer s.doc.leave(e)
	s.log.Debug("editor joined", "remote", r.RemoteAddr)

	// The reader is the only other goroutine; this handler owns it and
	// returns only after it has ended. Reads and writes run under connCtx,
	// not the stopping signal: a cancelled read drops the connection
	// without the close handshake that tells the tab to reconnect.
	readErr := make(chan error, 1)
	go func() { readErr <- s.readEdits(s.connCtx, c, e) }()

	for {
		select {
		case <-e.notify:
			if err := s.send(s.connCtx, c, e); err != nil {
				c.CloseNow()
				<-readErr
				return
			}
		case err := <-readErr:
			// The tab left, or the reader already closed the
			// connection over a bad message.
			s.log.Debug("editor left", "remote", r.RemoteAddr, "err", err)
			return
		case <-s.stopping:
			c.Close(websocket.StatusGoingAway, "server shutting down")
			<-readErr
			return
		}
	}
}

func (s *server) readEdits(ctx context.Context, c *websocket.Conn, e *editor) error {
	for {
		var m editMsg
		// On a message that is not JSON, wsjson closes the connection
		// itself (StatusInvalidFramePayloadData).
		if err := wsjson.Read(ctx, c, &m); err != nil {
			return err
		}
		if len(m.Text) > maxText {
			c.Close(websocket.StatusMessageTooBig, "document too large")
			return errors.New("document too large")
		}
		s.doc.edit(e, m.Seq, m.Text)
	}
}

func (s *server) send(ctx context.Context, c *websocket.Conn, e *editor) error {
	m := s.doc.snapshot(e)
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	return wsjson.Write(ctx, c, m)
}

// doc is the shared document and the set of editors watching it.
//
// Broadcasting starts no goroutine: a change only pokes each editor's
// notify channel, and each connection's own handler sends the state as it
// is when it gets there. A slow tab thus skips intermediate versions
// instead of queueing them, and never holds up anyone else.
type doc struct {
	mu      sync.Mutex
	text    string
	version int64
	editors map[*editor]struct{}
}

type editor struct {
	// notify holds at most one pending "state changed" signal.
	notify chan struct{}
	ack    int64 // guarded by doc.mu
}

func (e *editor) poke() {
	select {
	case e.notify <- struct{}{}:
	default: // a signal is already pending; it covers this change too
	}
}

func (d *doc) join() *editor {
	e := &editor{notify: make(chan struct{}, 1)}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.editors[e] = struct{}{}
	d.pokeAll() // the newcomer needs the text; the others, the new count
	return e
}

func (d *doc) leave(e *editor) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.editors, e)
	d.pokeAll()
}

func (d *doc) edit(e *editor, seq int64, text string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	e.ack = max(e.ack, seq)
	if text == d.text {
		e.poke() // nothing changed, but the sender waits for its ack
		return
	}
	d.text = text
	d.version++
	d.pokeAll()
}

func (d *doc) pokeAll() {
	for e := range d.editors {
		e.poke()
	}
}

// snapshot returns the state as editor e (or nil: nobody) should see it.
// The ack is read with the text, under one lock: an ack newer than the text
// would make the tab apply a text older than its own last edit.
func (d *doc) snapshot(e *editor) stateMsg {
	d.mu.Lock()
	defer d.mu.Unlock()
	m := stateMsg{Text: d.text, Version: d.version, Editors: len(d.editors)}
	if e != nil {
		m.Ack = e.ack
	}
	return m
}
