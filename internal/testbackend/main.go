// Command testbackend is the backend Berth's tests run (the runtime
// conformance suite, e2e): a tiny static
// HTTP server whose behaviour is steered by TB_* environment variables. It
// must stay pure Go with no dependencies outside the standard library, since
// it also runs in a FROM scratch image (no shell, no libc).
//
// Endpoints (on $PORT, all interfaces):
//
//	GET /             200, JSON object of the whole environment
//	/args             JSON array of the command line
//	/echo[/…]         JSON of the request: method, url, headers, body
//	/log?line=X       prints X to stdout
//	/exit?code=N      replies, then exits with code N
//	/crash            replies, then panics (exit status 2)
//	/sleep?ms=N       replies after N milliseconds
//	/conn             JSON array of the requests its connection carried so
//	                  far, this one included: "METHOD PATH USER-AGENT"
//	/count            adds one to a counter kept in memory, answers its value
//	/ticks            how many times TB_SPIN's ticker has run
//
// Knobs:
//
//	TB_READY_DELAY_MS=N   wait N ms before listening
//	TB_LOG_LINES=N        print "tb stdout i" and "tb stderr i", i = 1..N, at start
//	TB_EXIT_AFTER_MS=N    exit after N ms with code TB_EXIT_CODE (default 0)
//	TB_IGNORE_SIGTERM=1   ignore SIGTERM (SIGINT still stops it)
//	TB_TERM_DELAY_MS=N    on SIGTERM or SIGINT, log "got SIGTERM", wait N ms, exit 0
//	TB_CHILD=1            start a copy of itself in the same process group that
//	                      ignores SIGTERM and sleeps; its pid is written to
//	                      $TB_CHILD_PIDFILE before the server listens
//	TB_ALLOC_MB=N         allocate and touch N MiB before listening
//	TB_SPIN=1             keep busy: every millisecond, spin for 200 µs
//	TB_SAVE_COUNT=1       start /count from $BERTH_STATE_DIR/count, and write
//	                      the counter there on SIGTERM or SIGINT, before exit
//	TB_ALLOC_AFTER_MS=N   wait N ms before that allocation
//	TB_AUDIT_FILE=PATH    append one line per event of this backend's life to
//	                      PATH, each in a single O_APPEND write, so lines of
//	                      many backends never interleave:
//	                      "tb-audit EVENT key=K backend=ID fence=N pid=P [more] at=NS"
//	                      (at: the host's clock, Unix nanoseconds)
//	                      EVENT is start, locked (late=1 when it had to wait),
//	                      VIOLATION (holder="…" names the other holder),
//	                      ready (listening), stop (signal=…) or exit (code=…:
//	                      /exit, /crash, TB_EXIT_AFTER_MS, a fatal error)
//	TB_LOCK_DIR=DIR       first thing at start, take flock(LOCK_EX|LOCK_NB) on
//	                      DIR/<key>.lock (the key escaped), which the kernel
//	                      releases when the process dies, even by SIGKILL: two
//	                      live backends of one key cannot both hold it. Held by
//	                      another process: append a VIOLATION line to
//	                      TB_AUDIT_FILE, keep running, and take the lock when it
//	                      frees, so a third holder is caught too
//
// Pooled backends: see claim.go.
//
// ${VAR} in TB_AUDIT_FILE and TB_LOCK_DIR is expanded from the environment,
// so a container can name BERTH_STATE_DIR, which it only learns at start.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// ballast keeps TB_ALLOC_MB alive.
var ballast []byte

func main() {
	if os.Getenv("TB_ROLE") == "child" {
		signal.Ignore(syscall.SIGTERM, syscall.SIGINT)
		for { // not select{}: the runtime would call that a deadlock
			time.Sleep(time.Hour)
		}
	}
	// Before anything else: the sooner the lock is taken, the less of a
	// second holder's life goes unseen.
	var held string
	if dir := os.Getenv("TB_LOCK_DIR"); dir != "" {
		var err error
		if held, err = lockKey(os.ExpandEnv(dir)); err != nil {
			fatal("lock key: %v", err)
		}
	}
	audit("start", "")
	switch {
	case os.Getenv("TB_LOCK_DIR") == "":
	case held == "":
		audit("locked", "")
	default:
		audit("VIOLATION", "holder="+strconv.Quote(held))
		fmt.Fprintf(os.Stderr, "testbackend: VIOLATION: key %s is held by %s\n", os.Getenv("BERTH_KEY"), held)
		go awaitLock()
	}
	for i := 1; i <= envInt("TB_LOG_LINES"); i++ {
		fmt.Fprintf(os.Stdout, "tb stdout %d\n", i)
		fmt.Fprintf(os.Stderr, "tb stderr %d\n", i)
	}
	if os.Getenv("TB_CHILD") == "1" {
		if err := startChild(); err != nil {
			fatal("start child: %v", err)
		}
	}
	if mb := envInt("TB_ALLOC_MB"); mb > 0 {
		time.Sleep(time.Duration(envInt("TB_ALLOC_AFTER_MS")) * time.Millisecond)
		ballast = make([]byte, mb<<20)
		for i := 0; i < len(ballast); i += 4096 {
			ballast[i] = 1
		}
		fmt.Printf("allocated %d MiB\n", mb)
	}
	if os.Getenv("TB_SAVE_COUNT") == "1" {
		b, _ := os.ReadFile(filepath.Join(os.Getenv("BERTH_STATE_DIR"), "count"))
		n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		counter.Store(n)
	}
	if os.Getenv("TB_SPIN") == "1" {
		go spin()
	}
	handleSignals()
	if ms := envInt("TB_EXIT_AFTER_MS"); ms > 0 {
		time.AfterFunc(time.Duration(ms)*time.Millisecond, func() {
			audit("exit", "code="+strconv.Itoa(envInt("TB_EXIT_CODE")))
			os.Exit(envInt("TB_EXIT_CODE"))
		})
	}
	time.Sleep(time.Duration(envInt("TB_READY_DELAY_MS")) * time.Millisecond)
	preclaimProbe()

	ln, err := net.Listen("tcp", ":"+os.Getenv("PORT"))
	if err != nil {
		fatal("listen: %v", err)
	}
	fmt.Fprintf(os.Stderr, "listening on %s\n", ln.Addr())
	audit("ready", "")
	srv := &http.Server{
		Handler: recordRequests(mux()),
		ConnContext: func(ctx context.Context, _ net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, new(connLog))
		},
	}
	fatal("serve: %v", srv.Serve(ln))
}

// connLog is what one connection carried, for /conn.
type connLog struct {
	mu       sync.Mutex
	requests []string
}

type connKey struct{}

func recordRequests(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if cl, ok := r.Context().Value(connKey{}).(*connLog); ok {
			cl.mu.Lock()
			cl.requests = append(cl.requests, r.Method+" "+r.URL.Path+" "+r.UserAgent())
			cl.mu.Unlock()
		}
		h.ServeHTTP(w, r)
	})
}

func mux() *http.ServeMux {
	m := http.NewServeMux()
	m.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		env := make(map[string]string)
		for _, kv := range os.Environ() {
			k, v, _ := strings.Cut(kv, "=")
			env[k] = v
		}
		writeJSON(w, env)
	})
	m.HandleFunc("/args", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, os.Args)
	})
	echo := func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		writeJSON(w, map[string]any{
			"method": r.Method, "url": r.URL.String(), "headers": r.Header, "body": string(body),
		})
	}
	m.HandleFunc("/echo", echo)
	m.HandleFunc("/count", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, counter.Add(1))
	})
	m.HandleFunc("/ticks", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, ticks.Load())
	})
	m.HandleFunc("/echo/", echo)
	m.HandleFunc("/log", func(w http.ResponseWriter, r *http.Request) {
		fmt.Println(r.URL.Query().Get("line"))
	})
	m.HandleFunc("/exit", func(w http.ResponseWriter, r *http.Request) {
		code, _ := strconv.Atoi(r.URL.Query().Get("code"))
		reply(w, "exiting")
		audit("exit", "code="+strconv.Itoa(code))
		os.Exit(code)
	})
	m.HandleFunc("/crash", func(w http.ResponseWriter, r *http.Request) {
		reply(w, "crashing")
		audit("exit", "code=2 crash=1")
		// Outside the handler's goroutine, where net/http would recover it.
		go func() { panic("testbackend: crash requested") }()
		select {}
	})
	// /dial?addr=host:port reports whether this backend can open a TCP
	// connection there, for tests of network isolation.
	m.HandleFunc("/dial", func(w http.ResponseWriter, r *http.Request) {
		c, err := net.DialTimeout("tcp", r.URL.Query().Get("addr"), time.Second)
		if err != nil {
			writeJSON(w, map[string]string{"error": err.Error()})
			return
		}
		c.Close()
		writeJSON(w, map[string]string{})
	})
	m.HandleFunc("/conn", func(w http.ResponseWriter, r *http.Request) {
		cl := r.Context().Value(connKey{}).(*connLog)
		cl.mu.Lock()
		defer cl.mu.Unlock()
		writeJSON(w, cl.requests)
	})
	mountClaim(m)
	m.HandleFunc("/sleep", func(w http.ResponseWriter, r *http.Request) {
		ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
		time.Sleep(time.Duration(ms) * time.Millisecond)
		reply(w, "slept")
	})
	return m
}

// counter is /count's; ticks counts spin's rounds.
var counter, ticks atomic.Int64

// spin keeps the process busy (TB_SPIN), so a test can tell a frozen
// backend, which uses no CPU at all, from a running one.
func spin() {
	for range time.Tick(time.Millisecond) {
		for end := time.Now().Add(200 * time.Microsecond); time.Now().Before(end); {
		}
		ticks.Add(1)
	}
}

// handleSignals implements the SIGTERM knobs; SIGINT is treated alike so
// tests can check that a named stop signal is delivered.
func handleSignals() {
	c := make(chan os.Signal, 1)
	if os.Getenv("TB_IGNORE_SIGTERM") == "1" {
		signal.Ignore(syscall.SIGTERM)
		signal.Notify(c, syscall.SIGINT)
	} else {
		signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	}
	go func() {
		sig := <-c
		fmt.Fprintf(os.Stderr, "got %s\n", name(sig))
		if os.Getenv("TB_SAVE_COUNT") == "1" {
			f := filepath.Join(os.Getenv("BERTH_STATE_DIR"), "count")
			if err := os.WriteFile(f, []byte(strconv.FormatInt(counter.Load(), 10)), 0o644); err != nil {
				fmt.Fprintf(os.Stderr, "testbackend: save count: %v\n", err)
			}
		}
		audit("stop", "signal="+name(sig))
		time.Sleep(time.Duration(envInt("TB_TERM_DELAY_MS")) * time.Millisecond)
		os.Exit(0)
	}()
}

// startChild starts a copy of this program in the same process group, so
// tests can check that stopping a backend stops everything it started.
func startChild() error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), "TB_ROLE=child")
	if err := cmd.Start(); err != nil {
		return err
	}
	if f := os.Getenv("TB_CHILD_PIDFILE"); f != "" {
		tmp := f + ".tmp"
		if err := os.WriteFile(tmp, []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
			return err
		}
		return os.Rename(tmp, f)
	}
	return nil
}

func name(s os.Signal) string {
	switch s {
	case syscall.SIGTERM:
		return "SIGTERM"
	case syscall.SIGINT:
		return "SIGINT"
	}
	return s.String()
}

func reply(w http.ResponseWriter, msg string) {
	w.Header().Set("Connection", "close")
	fmt.Fprintln(w, msg)
	w.(http.Flusher).Flush()
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

func envInt(k string) int {
	n, _ := strconv.Atoi(os.Getenv(k))
	return n
}

func fatal(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	fmt.Fprintf(os.Stderr, "testbackend: %s\n", msg)
	audit("exit", "code=1 err="+strconv.Quote(msg))
	os.Exit(1)
}

// audit appends one event to TB_AUDIT_FILE, if set. Errors go to stderr
// only: the line is evidence for a test, not a reason to stop serving.
func audit(event, extra string) {
	path := os.Getenv("TB_AUDIT_FILE")
	if path == "" {
		return
	}
	line := fmt.Sprintf("tb-audit %s %s", event, identity())
	if extra != "" {
		line += " " + extra
	}
	// When, by this host's clock: every backend of a test runs on one
	// kernel (containers too), so the lines of different backends order.
	line += " at=" + strconv.FormatInt(time.Now().UnixNano(), 10)
	f, err := os.OpenFile(os.ExpandEnv(path), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o666)
	if err != nil {
		fmt.Fprintf(os.Stderr, "testbackend: audit: %v\n", err)
		return
	}
	defer f.Close()
	if _, err := f.Write([]byte(line + "\n")); err != nil {
		fmt.Fprintf(os.Stderr, "testbackend: audit: %v\n", err)
	}
}

// identity names this backend in audit lines and lock files.
func identity() string {
	return fmt.Sprintf("key=%s backend=%s fence=%s pid=%d",
		os.Getenv("BERTH_KEY"), os.Getenv("BERTH_BACKEND_ID"), os.Getenv("BERTH_FENCING_TOKEN"), os.Getpid())
}

// keyLock is the file whose flock marks this backend as its key's holder.
// It stays open (and so locked) until the process dies.
var keyLock *os.File

// lockKey opens dir/<key>.lock and tries to lock it. It returns "" when
// this process now holds the key, else who holds it (as that holder wrote
// it into the file; possibly empty if it has not yet), which is "?" then.
func lockKey(dir string) (holder string, err error) {
	f, err := os.OpenFile(filepath.Join(dir, lockName(os.Getenv("BERTH_KEY"))), os.O_RDWR|os.O_CREATE, 0o666)
	if err != nil {
		return "", err
	}
	keyLock = f
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	if err == nil {
		claim(f)
		return "", nil
	}
	if err != syscall.EWOULDBLOCK {
		return "", fmt.Errorf("flock %s: %w", f.Name(), err)
	}
	b, _ := io.ReadAll(io.NewSectionReader(f, 0, 1024))
	if holder = strings.TrimSpace(string(b)); holder == "" {
		holder = "?"
	}
	return holder, nil
}

// awaitLock waits for the key's lock after a VIOLATION, so that while this
// process lives a third holder of the key is caught as well.
func awaitLock() {
	if err := syscall.Flock(int(keyLock.Fd()), syscall.LOCK_EX); err != nil {
		fmt.Fprintf(os.Stderr, "testbackend: flock %s: %v\n", keyLock.Name(), err)
		return
	}
	claim(keyLock)
	audit("locked", "late=1")
}

// claim writes who holds the lock into the lock file, for the next
// process that finds it held.
func claim(f *os.File) {
	f.Truncate(0)
	f.WriteAt([]byte(identity()+"\n"), 0)
}

// lockName turns a key (any of [A-Za-z0-9._:/@-]) into a file name:
// letters, digits, '.' and '-' stay, every other byte becomes _XX (hex),
// so two keys never share a name; a name that would grow too long for a
// directory entry is the key's SHA-256 instead.
func lockName(key string) string {
	var b strings.Builder
	for i := 0; i < len(key); i++ {
		c := key[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "_%02x", c)
		}
	}
	name := b.String()
	if name == "" || len(name) > 200 || strings.HasPrefix(name, ".") {
		sum := sha256.Sum256([]byte(key))
		name = "sha256-" + hex.EncodeToString(sum[:])
	}
	return name + ".lock"
}
