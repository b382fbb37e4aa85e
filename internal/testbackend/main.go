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
//	TB_ALLOC_AFTER_MS=N   wait N ms before that allocation
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
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
	handleSignals()
	if ms := envInt("TB_EXIT_AFTER_MS"); ms > 0 {
		time.AfterFunc(time.Duration(ms)*time.Millisecond, func() { os.Exit(envInt("TB_EXIT_CODE")) })
	}
	time.Sleep(time.Duration(envInt("TB_READY_DELAY_MS")) * time.Millisecond)

	ln, err := net.Listen("tcp", ":"+os.Getenv("PORT"))
	if err != nil {
		fatal("listen: %v", err)
	}
	fmt.Fprintf(os.Stderr, "listening on %s\n", ln.Addr())
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
	m.HandleFunc("/echo/", echo)
	m.HandleFunc("/log", func(w http.ResponseWriter, r *http.Request) {
		fmt.Println(r.URL.Query().Get("line"))
	})
	m.HandleFunc("/exit", func(w http.ResponseWriter, r *http.Request) {
		code, _ := strconv.Atoi(r.URL.Query().Get("code"))
		reply(w, "exiting")
		os.Exit(code)
	})
	m.HandleFunc("/crash", func(w http.ResponseWriter, r *http.Request) {
		reply(w, "crashing")
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
	m.HandleFunc("/sleep", func(w http.ResponseWriter, r *http.Request) {
		ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
		time.Sleep(time.Duration(ms) * time.Millisecond)
		reply(w, "slept")
	})
	return m
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
	fmt.Fprintf(os.Stderr, "testbackend: "+format+"\n", args...)
	os.Exit(1)
}
