package state

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
	"github.com/berthhq/berth/blob"
	"github.com/berthhq/berth/internal/jsonbody"
)

// BackendAPI serves the backends' own API (BERTH_STATE_URL):
// GET and PUT /v1/backends/{id}/state, authenticated by the backend's secret.
func (s *Service) BackendAPI() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/backends/{id}/state", s.getOwn)
	mux.HandleFunc("PUT /v1/backends/{id}/state", s.putOwn)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, http.StatusNotFound, api.CodeNotFound, "", "no such route on the backend API: "+r.Method+" "+r.URL.Path)
	})
	return mux
}

// caller authenticates a backend by its secret. Every wrong secret gets
// the same 401, whether the backend is live, terminated or unknown, so
// the answer tells nobody which ids are live. A backend that proves who
// it is but no longer holds its key gets 409.
func (s *Service) caller(w http.ResponseWriter, r *http.Request) (*berth.Backend, bool) {
	id := r.PathValue("id")
	b, live := s.cfg.Holders.LiveBackend(id)
	if b == nil {
		var err error
		if b, err = s.cfg.Holders.Backend(r.Context(), id); err != nil && !errors.Is(err, berth.ErrNotFound) {
			s.log.Error("look up backend", "backend", id, "err", err)
			writeErr(w, http.StatusServiceUnavailable, api.CodeUnavailable, "", "Berth's store is unavailable; retry")
			return nil, false
		}
	}
	want := s.noSecret
	if b != nil {
		want = b.Secret
	}
	secret, bearer := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !sameSecret(secret, want) || !bearer || b == nil {
		writeErr(w, http.StatusUnauthorized, api.CodeUnauthorized, "", "send Authorization: Bearer $BERTH_SECRET")
		return nil, false
	}
	if !live {
		writeErr(w, http.StatusConflict, api.CodeConflict, "", "backend "+id+" no longer holds its key: it has terminated")
		return nil, false
	}
	if b.Key == "" {
		// A pooled backend before its claim: it has no key whose state
		// it could read or write (and does not know its secret yet).
		writeErr(w, http.StatusConflict, api.CodeConflict, "", "backend "+id+" holds no key: a pooled backend may use the state API only once it has been claimed")
		return nil, false
	}
	if m := b.Spawn.StateMode(); m != berth.StateModeBlob && !(m == berth.StateModeDir && s.dirSync(b.Runtime)) {
		writeErr(w, http.StatusConflict, api.CodeConflict, "spawn.state.mode", "this backend's state mode is "+string(b.Spawn.StateMode())+", not blob")
		return nil, false
	}
	return b, true
}

// sameSecret compares a and b in time that depends on neither, their
// lengths included (subtle.ConstantTimeCompare returns at once on
// different lengths).
func sameSecret(a, b string) bool {
	ha, hb := sha256.Sum256([]byte(a)), sha256.Sum256([]byte(b))
	return subtle.ConstantTimeCompare(ha[:], hb[:]) == 1
}

func (s *Service) getOwn(w http.ResponseWriter, r *http.Request) {
	b, ok := s.caller(w, r)
	if !ok {
		return
	}
	rc, err := s.Load(r.Context(), b.Key)
	if errors.Is(err, blob.ErrNotFound) {
		writeErr(w, http.StatusNotFound, api.CodeNotFound, "", "no saved state for key "+b.Key)
		return
	}
	if err != nil {
		s.log.Error("load state", "key", b.Key, "err", err)
		writeErr(w, http.StatusServiceUnavailable, api.CodeUnavailable, "", "the blob store is unavailable; retry")
		return
	}
	defer rc.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	io.Copy(w, rc)
}

func (s *Service) putOwn(w http.ResponseWriter, r *http.Request) {
	b, ok := s.caller(w, r)
	if !ok {
		return
	}
	end := s.writers.begin(b.ID)
	if end == nil {
		writeErr(w, http.StatusConflict, api.CodeConflict, "", "backend "+b.ID+" is stopping and its final state is being made durable; no more writes are accepted")
		return
	}
	defer end()
	if r.ContentLength > s.cfg.MaxStateBytes {
		// Refused unread: without Connection: close, net/http would read
		// (up to 256 KiB of) the rest before answering, to keep the
		// connection.
		w.Header().Set("Connection", "close")
		writeErr(w, http.StatusRequestEntityTooLarge, api.CodeTooLarge, "body", fmt.Sprintf("state is %d bytes; the limit is %d", r.ContentLength, s.cfg.MaxStateBytes))
		return
	}
	// Past the limit, MaxBytesReader makes net/http close the connection
	// rather than read the rest.
	r.Body = http.MaxBytesReader(w, r.Body, s.cfg.MaxStateBytes)
	info, spooled, err := s.Save(r.Context(), b, r.Body)
	var mbe *http.MaxBytesError
	switch {
	case errors.Is(err, ErrTooLarge), errors.As(err, &mbe):
		writeErr(w, http.StatusRequestEntityTooLarge, api.CodeTooLarge, "body", fmt.Sprintf("state is larger than the %d-byte limit", s.cfg.MaxStateBytes))
	case errors.Is(err, blob.ErrFenced):
		writeErr(w, http.StatusConflict, api.CodeConflict, "", "refused: a newer holder of key "+b.Key+" has taken over (fencing token "+itoa(b.FencingToken)+" is stale)")
	case err != nil:
		s.log.Error("save state", "key", b.Key, "err", err)
		writeErr(w, http.StatusInternalServerError, api.CodeInternal, "", "saving state failed; retry")
	case spooled:
		writeJSON(w, http.StatusAccepted, map[string]any{"key": b.Key, "spooled": true,
			"message": "kept on Berth's disk; it will be uploaded when the blob store is back"})
	default:
		writeJSON(w, http.StatusOK, info)
	}
}

// Mount adds the control API's state routes to mux: history, one saved
// state, and restore. Keys go in query strings or bodies because they may
// contain '/'.
func (s *Service) Mount(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/state", s.versions)
	mux.HandleFunc("GET /v1/state/data", s.data)
	mux.HandleFunc("POST /v1/state/restore", s.restore)
}

func queryKey(w http.ResponseWriter, r *http.Request) (string, bool) {
	key := r.URL.Query().Get("key")
	if err := berth.ValidateKey(key); err != nil {
		writeErr(w, http.StatusBadRequest, api.CodeBadRequest, "key", "key: "+err.Error())
		return "", false
	}
	if berth.Reserved(key) {
		writeErr(w, http.StatusBadRequest, api.CodeBadRequest, "key", "key: keys starting with "+berth.ReservedKeyPrefix+" are Berth's own")
		return "", false
	}
	return key, true
}

// VersionList is the answer to GET /v1/state.
type VersionList struct {
	Key      string      `json:"key"`
	Versions []blob.Info `json:"versions"`
}

func (s *Service) versions(w http.ResponseWriter, r *http.Request) {
	key, ok := queryKey(w, r)
	if !ok {
		return
	}
	vs, err := s.cfg.Blobs.Versions(r.Context(), key)
	if err != nil && !errors.Is(err, blob.ErrNotFound) {
		s.blobErr(w, key, err)
		return
	}
	if vs == nil {
		vs = []blob.Info{}
	}
	writeJSON(w, http.StatusOK, VersionList{Key: key, Versions: vs})
}

func (s *Service) data(w http.ResponseWriter, r *http.Request) {
	key, ok := queryKey(w, r)
	if !ok {
		return
	}
	var rc io.ReadCloser
	var err error
	if v := r.URL.Query().Get("version"); v != "" {
		rc, _, err = s.cfg.Blobs.GetVersion(r.Context(), key, v)
	} else {
		rc, err = s.Load(r.Context(), key)
	}
	if err != nil {
		s.blobErr(w, key, err)
		return
	}
	defer rc.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	io.Copy(w, rc)
}

// RestoreRequest is the body of POST /v1/state/restore.
type RestoreRequest struct {
	Key     string `json:"key"`
	Version string `json:"version"`
}

func (s *Service) restore(w http.ResponseWriter, r *http.Request) {
	var req RestoreRequest
	if err := jsonbody.Read(w, r, 1<<16, &req); err != nil {
		var tl *jsonbody.TooLargeError
		var fe *berth.FieldError
		switch {
		case errors.As(err, &tl):
			writeErr(w, http.StatusRequestEntityTooLarge, api.CodeTooLarge, "body", tl.Error())
		case errors.As(err, &fe):
			writeErr(w, http.StatusBadRequest, api.CodeBadRequest, fe.Field, fe.Error()+` (send {"key": …, "version": …})`)
		default:
			writeErr(w, http.StatusBadRequest, api.CodeBadRequest, "body", err.Error())
		}
		return
	}
	if err := berth.ValidateKey(req.Key); err != nil {
		writeErr(w, http.StatusBadRequest, api.CodeBadRequest, "key", "key: "+err.Error())
		return
	}
	if berth.Reserved(req.Key) {
		writeErr(w, http.StatusBadRequest, api.CodeBadRequest, "key", "key: keys starting with "+berth.ReservedKeyPrefix+" are Berth's own")
		return
	}
	if req.Version == "" {
		writeErr(w, http.StatusBadRequest, api.CodeBadRequest, "version", "version: required; list them with GET /v1/state?key=")
		return
	}
	if s.cfg.Holders.KeyLive(req.Key) {
		writeErr(w, http.StatusConflict, api.CodeConflict, "key", "key "+req.Key+" is live; terminate its backend before restoring")
		return
	}
	if err := s.spool.flush(r.Context(), req.Key); err != nil {
		s.blobErr(w, req.Key, err)
		return
	}
	// Restore as the key's current fence: it is no holder's write, and any
	// later holder's token is larger.
	info, err := s.cfg.Blobs.Restore(r.Context(), req.Key, req.Version, currentFence(r.Context(), s.cfg.Blobs, req.Key))
	if err != nil {
		s.blobErr(w, req.Key, err)
		return
	}
	writeJSON(w, http.StatusOK, info)
}

func (s *Service) blobErr(w http.ResponseWriter, key string, err error) {
	switch {
	case errors.Is(err, blob.ErrNotFound):
		writeErr(w, http.StatusNotFound, api.CodeNotFound, "", "no saved state for key "+key+" (or no such version)")
	case errors.Is(err, blob.ErrFenced):
		writeErr(w, http.StatusConflict, api.CodeConflict, "", err.Error())
	default:
		s.log.Error("blob store", "key", key, "err", err)
		writeErr(w, http.StatusServiceUnavailable, api.CodeUnavailable, "", "the blob store is unavailable; retry")
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, status int, code, field, msg string) {
	writeJSON(w, status, api.ErrorBody{Error: api.ErrorDetail{Code: code, Message: msg, Field: field}})
}

// currentFence learns key's fence by asking to raise it to 0, which every
// adapter refuses with the fence it holds; an operator's restore is written
// at exactly that fence, so the last holder's successors still win.
func currentFence(ctx context.Context, blobs blob.Store, key string) int64 {
	var fe *blob.FencedError
	if err := blobs.Fence(ctx, key, 0); errors.As(err, &fe) {
		return fe.Current
	}
	return 0
}
