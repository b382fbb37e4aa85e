package server

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
	"github.com/berthhq/berth/internal/jsonbody"
	"github.com/berthhq/berth/store"
	"github.com/berthhq/berth/ui"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// MaxBodyBytes bounds every control API request body.
const MaxBodyBytes = 1 << 20

// APIConfig configures the control API handler.
type APIConfig struct {
	Manager *Manager
	// APIKey, when set, is required as "Authorization: Bearer <key>" on every
	// route but /healthz.
	APIKey   string
	Gatherer prometheus.Gatherer
	Logger   *slog.Logger
	// Extra routes (the state API) are mounted by the caller on Mux.
	Mux *http.ServeMux
	// Demo, when set, serves GET /demo (berth dev): a connect to key "demo"
	// with the spawn Demo returns, answered by a redirect to the fresh
	// proxy URL, so a browser starts the demo backend again once it went
	// idle.
	Demo func() (*berth.SpawnConfig, error)
}

// NewAPI returns the control API as an http.Handler.
func NewAPI(cfg APIConfig) http.Handler {
	a := &apiServer{m: cfg.Manager, log: cfg.Logger}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	mux := cfg.Mux
	if mux == nil {
		mux = http.NewServeMux()
	}
	mux.Handle("POST /v1/connect", a.handle(a.connect))
	mux.Handle("GET /v1/backends", a.handle(a.list))
	mux.Handle("GET /v1/backends/{id}", a.handle(a.get))
	mux.Handle("POST /v1/backends/{id}/terminate", a.handle(a.terminate))
	mux.Handle("GET /v1/backends/{id}/events", a.handle(a.events))
	mux.Handle("GET /v1/backends/{id}/logs", a.handle(a.logs))
	mux.Handle("GET /v1/events", a.handle(a.allEvents))
	mux.Handle("GET /ui/", ui.Handler())
	mux.Handle("GET /{$}", http.RedirectHandler("/ui/", http.StatusFound))
	a.mountSessions(mux, sessions{key: cfg.APIKey})
	a.mountNodes(mux)
	a.mountPools(mux)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if err := a.m.Healthy(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			json.NewEncoder(w).Encode(map[string]any{"status": "cut_off", "backends": a.m.LiveCount(), "message": err.Error()})
			return
		}
		fmt.Fprintf(w, `{"status":"ok","backends":%d}`+"\n", a.m.LiveCount())
	})
	if cfg.Demo != nil {
		mux.Handle("GET /demo", a.handle(func(w http.ResponseWriter, r *http.Request) error {
			spawn, err := cfg.Demo()
			if err != nil {
				return err
			}
			resp, err := a.m.Connect(r.Context(), &api.ConnectRequest{Key: "demo", Spawn: spawn, User: "browser", Wait: true})
			if err != nil {
				return err
			}
			http.Redirect(w, r, resp.URL, http.StatusFound)
			return nil
		}))
	}
	if cfg.Gatherer != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{}))
	}
	mux.HandleFunc("GET /v1/openapi.json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(api.OpenAPI)
	})
	mux.Handle("/", a.handle(func(w http.ResponseWriter, r *http.Request) error {
		if allow := allowed(mux, r); len(allow) > 0 {
			w.Header().Set("Allow", strings.Join(allow, ", "))
			return &HTTPError{Status: http.StatusMethodNotAllowed, Code: api.CodeMethodNotAllowed,
				Message: r.Method + " " + r.URL.Path + " is not allowed; use " + strings.Join(allow, " or ")}
		}
		return &HTTPError{Status: http.StatusNotFound, Code: api.CodeNotFound, Message: "no such route: " + r.Method + " " + r.URL.Path}
	}))
	var h http.Handler = mux
	if cfg.APIKey != "" {
		h = requireKey(cfg.APIKey, h)
	}
	return h
}

// allowed returns the methods mux has a route for at r's path, other than
// the catch-all "/": a path that exists answers a wrong method with 405 and
// Allow, not 404. A GET route serves HEAD too.
func allowed(mux *http.ServeMux, r *http.Request) []string {
	var allow []string
	for _, method := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
		if method == r.Method {
			continue
		}
		if _, pattern := mux.Handler(&http.Request{Method: method, Host: r.Host, URL: r.URL}); pattern != "" && pattern != "/" {
			allow = append(allow, method)
		}
	}
	return allow
}

// requireKey admits a request with the API key as a Bearer token, or,
// without an Authorization header, with the dashboard's session cookie.
func requireKey(key string, next http.Handler) http.Handler {
	want := []byte("Bearer " + key)
	s := sessions{key: key}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if publicPath(r.URL.Path) {
			next.ServeHTTP(w, r)
			return
		}
		got := []byte(r.Header.Get("Authorization"))
		if len(got) == 0 && s.valid(r, time.Now()) {
			if err := checkUIHeader(r); err != nil {
				WriteError(w, err)
				return
			}
			next.ServeHTTP(w, r)
			return
		}
		if subtle.ConstantTimeCompare(got, want) != 1 {
			WriteError(w, &HTTPError{Status: http.StatusUnauthorized, Code: api.CodeUnauthorized,
				Message: "missing or wrong API key; send Authorization: Bearer <api key>, or sign in at /ui/"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

type apiServer struct {
	m   *Manager
	log *slog.Logger
}

// HTTPError is an error with the status and code the client should see.
type HTTPError struct {
	Status  int
	Code    string
	Message string
	Field   string
	// Ended, for backend_failed, is the backend a connect waited for.
	Ended *EndedError
}

func (e *HTTPError) Error() string { return e.Message }

// handle turns a handler's error into the JSON error body. Berth's own
// failures are logged; a backend that ended (502) is the backend's.
func (a *apiServer) handle(fn func(http.ResponseWriter, *http.Request) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := fn(w, r); err != nil {
			if he := toHTTPError(err); he.Status >= 500 && he.Ended == nil {
				a.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
			}
			WriteError(w, err)
		}
	})
}

func toHTTPError(err error) *HTTPError {
	var he *HTTPError
	var fe *berth.FieldError
	var ee *EndedError
	switch {
	case errors.As(err, &he):
		return he
	case errors.As(err, &ee):
		return &HTTPError{Status: http.StatusBadGateway, Code: api.CodeBackendFailed, Message: ee.Error(), Ended: ee}
	case errors.As(err, &fe):
		return &HTTPError{Status: http.StatusBadRequest, Code: api.CodeBadRequest, Message: fe.Error(), Field: fe.Field}
	case errors.Is(err, berth.ErrNotFound):
		return &HTTPError{Status: http.StatusNotFound, Code: api.CodeNotFound, Message: err.Error()}
	case errors.Is(err, berth.ErrKeyHeld), errors.Is(err, berth.ErrConflict):
		return &HTTPError{Status: http.StatusConflict, Code: api.CodeConflict, Message: err.Error()}
	case errors.Is(err, errShuttingDown), errors.Is(err, errNoNode):
		return &HTTPError{Status: http.StatusServiceUnavailable, Code: api.CodeUnavailable, Message: err.Error()}
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return &HTTPError{Status: http.StatusServiceUnavailable, Code: api.CodeUnavailable, Message: err.Error()}
	}
	return &HTTPError{Status: http.StatusInternalServerError, Code: api.CodeInternal, Message: "internal error; see the server log"}
}

// WriteError writes err as the JSON error body with a fitting status.
func WriteError(w http.ResponseWriter, err error) {
	he := toHTTPError(err)
	d := api.ErrorDetail{Code: he.Code, Message: he.Message, Field: he.Field}
	if e := he.Ended; e != nil {
		d.BackendID, d.Reason, d.ExitCode, d.Logs = e.Backend.ID, e.Backend.Reason, e.Backend.ExitCode, e.Logs
	}
	writeJSON(w, he.Status, api.ErrorBody{Error: d})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	var buf bytes.Buffer
	json.NewEncoder(&buf).Encode(v)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

// DecodeJSON reads a request body strictly (package jsonbody): at most
// MaxBodyBytes, one JSON value, no unknown fields, no key twice in an
// object. Errors are *HTTPError naming the field at fault when they can.
func DecodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	return decodeError(jsonbody.Read(w, r, MaxBodyBytes, v))
}

func decodeStrict(body io.Reader, v any) error {
	return decodeError(jsonbody.Decode(body, v))
}

// decodeError turns jsonbody's errors into the API's.
func decodeError(err error) error {
	var tl *jsonbody.TooLargeError
	var fe *berth.FieldError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &tl):
		return &HTTPError{Status: http.StatusRequestEntityTooLarge, Code: api.CodeTooLarge, Field: "body", Message: tl.Error()}
	case errors.As(err, &fe):
		return badRequest(fe.Field, fe.Message)
	}
	return err
}

func badRequest(field, msg string) error {
	return &HTTPError{Status: http.StatusBadRequest, Code: api.CodeBadRequest, Field: field, Message: field + ": " + msg}
}

func (a *apiServer) connect(w http.ResponseWriter, r *http.Request) error {
	var req api.ConnectRequest
	if err := DecodeJSON(w, r, &req); err != nil {
		return err
	}
	resp, err := a.m.Connect(r.Context(), &req)
	if err != nil {
		return err
	}
	status := http.StatusOK
	if resp.Spawned {
		status = http.StatusCreated
	}
	writeJSON(w, status, resp)
	return nil
}

func (a *apiServer) get(w http.ResponseWriter, r *http.Request) error {
	b, err := a.m.Backend(r.Context(), r.PathValue("id"))
	if err != nil {
		return notFound(r.PathValue("id"), err)
	}
	writeJSON(w, http.StatusOK, b)
	return nil
}

func notFound(id string, err error) error {
	if errors.Is(err, berth.ErrNotFound) {
		return &HTTPError{Status: http.StatusNotFound, Code: api.CodeNotFound, Message: "backend " + id + " not found"}
	}
	return err
}

func (a *apiServer) list(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	f := store.Filter{Key: q.Get("key"), State: berth.State(q.Get("state")), Limit: 1000}
	if f.Key != "" {
		if err := berth.ValidateKey(f.Key); err != nil {
			return badRequest("key", err.Error())
		}
	}
	if f.State != "" && !f.State.Valid() {
		return badRequest("state", "must be one of scheduled, starting, ready, terminating, terminated")
	}
	if q.Get("live") == "true" {
		f.Live = true
	}
	bs, err := a.m.Backends(r.Context(), f)
	if err != nil {
		return err
	}
	if bs == nil {
		bs = []*berth.Backend{}
	}
	writeJSON(w, http.StatusOK, api.BackendList{Backends: bs})
	return nil
}

func (a *apiServer) terminate(w http.ResponseWriter, r *http.Request) error {
	var req api.TerminateRequest
	if r.ContentLength != 0 {
		if err := DecodeJSON(w, r, &req); err != nil {
			return err
		}
	}
	id := r.PathValue("id")
	if err := a.m.Terminate(r.Context(), id, req.Hard); err != nil {
		return notFound(id, err)
	}
	writeJSON(w, http.StatusAccepted, map[string]any{"backend_id": id, "terminating": true, "hard": req.Hard})
	return nil
}

// events streams a backend's history, then its live state changes, as
// Server-Sent Events; the stream ends after terminated.
func (a *apiServer) events(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	ctx := r.Context()
	// Subscribe before reading history so no change falls in between.
	changed, cancel := a.m.Subscribe(id)
	defer cancel()
	evs, err := a.m.Events(ctx, id, 0)
	if err != nil {
		return err
	}
	if len(evs) == 0 {
		if _, err := a.m.Backend(ctx, id); err != nil {
			return notFound(id, err)
		}
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	var last int64
	keepalive := time.NewTicker(15 * time.Second)
	defer keepalive.Stop()
	for {
		for _, e := range evs {
			last = e.Seq
			data, _ := json.Marshal(api.StateEvent{State: e.State, Reason: e.Reason, ExitCode: e.ExitCode,
				Message: e.Message, At: e.At.UTC().Format(time.RFC3339Nano)})
			fmt.Fprintf(w, "id: %d\nevent: state\ndata: %s\n\n", e.Seq, data)
			if e.State == berth.StateTerminated {
				rc.Flush()
				return nil
			}
		}
		if err := rc.Flush(); err != nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-keepalive.C:
			fmt.Fprint(w, ": keepalive\n\n")
			evs = nil
			continue
		case <-changed:
		}
		if evs, err = a.m.Events(ctx, id, last); err != nil {
			return nil // the stream has started; the client reconnects
		}
	}
}

func (a *apiServer) logs(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	follow := r.URL.Query().Get("follow")
	if follow != "" && follow != "true" && follow != "false" && follow != "1" && follow != "0" {
		return badRequest("follow", "must be true or false")
	}
	if _, err := a.m.Backend(r.Context(), id); err != nil {
		return notFound(id, err)
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	a.m.Logs(r.Context(), id, follow == "true" || follow == "1", flushWriter{w})
	return nil
}

// flushWriter flushes after each write so followed logs arrive as written.
type flushWriter struct{ w http.ResponseWriter }

func (f flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	http.NewResponseController(f.w).Flush()
	return n, err
}
