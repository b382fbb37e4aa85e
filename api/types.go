// Package api holds the control API's wire types and the Go client that the
// CLI (and anyone else) uses to talk to a running Berth server.
package api

import (
	"strings"
	"time"

	"github.com/berthhq/berth"
)

// ConnectRequest is the body of POST /v1/connect.
type ConnectRequest struct {
	Key                string             `json:"key,omitempty"`
	Spawn              *berth.SpawnConfig `json:"spawn,omitempty"`
	User               string             `json:"user,omitempty"`
	Wait               bool               `json:"wait,omitempty"`
	WaitTimeoutSeconds int                `json:"wait_timeout_seconds,omitempty"`
	// Pool names a warm pool to claim a backend from when the key has
	// none; its template is the spawn config (spawn may be omitted).
	Pool string `json:"pool,omitempty"`
}

// WaitTimeoutRange is what wait_timeout_seconds allows, in words.
const WaitTimeoutRange = "between 1 and 3600 (0 means the default, 60)"

// IntRange says which values the integer field at path (as in JSON:
// "spawn.grace_seconds") allows, so a decoder can say it when a number
// does not fit (jsonbody.Ranger).
func (*ConnectRequest) IntRange(path string) (string, bool) {
	if sub, ok := strings.CutPrefix(path, "spawn."); ok {
		return berth.IntRange(sub)
	}
	if path == "wait_timeout_seconds" {
		return WaitTimeoutRange, true
	}
	return "", false
}

// ConnectResponse is the answer to POST /v1/connect.
type ConnectResponse struct {
	BackendID string       `json:"backend_id"`
	Key       string       `json:"key,omitempty"`
	Spawned   bool         `json:"spawned"`
	State     berth.State  `json:"state"`
	Reason    berth.Reason `json:"reason,omitempty"`
	ExitCode  *int         `json:"exit_code,omitempty"`
	URL       string       `json:"url"`
	Token     string       `json:"token"`
	StatusURL string       `json:"status_url"`
	// FencingToken is the backend's fencing token (grows per key holder).
	FencingToken int64 `json:"fencing_token"`
	// Pool names the warm pool that started the backend, if one did.
	Pool string `json:"pool,omitempty"`
}

// TerminateRequest is the body of POST /v1/backends/{id}/terminate.
type TerminateRequest struct {
	Hard bool `json:"hard"`
}

// BackendList is the answer to GET /v1/backends.
type BackendList struct {
	Backends []*berth.Backend `json:"backends"`
}

// StateEvent is the data of each `event: state` on the events stream.
type StateEvent struct {
	State    berth.State  `json:"state"`
	Reason   berth.Reason `json:"reason,omitempty"`
	ExitCode *int         `json:"exit_code,omitempty"`
	Message  string       `json:"message,omitempty"`
	At       string       `json:"at"`
}

// ErrorBody is every error response: {"error": {"code", "message", "field"}}.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail describes one error. Field names the request field at fault,
// when there is one.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Field   string `json:"field,omitempty"`
	// For backend_failed, a connect that waited for a backend which
	// terminated instead of becoming ready: which backend, why it ended,
	// and the last lines of its output.
	BackendID string       `json:"backend_id,omitempty"`
	Reason    berth.Reason `json:"reason,omitempty"`
	ExitCode  *int         `json:"exit_code,omitempty"`
	Logs      string       `json:"logs,omitempty"`
}

// Error codes.
const (
	CodeBadRequest   = "bad_request"
	CodeUnauthorized = "unauthorized"
	CodeForbidden    = "forbidden"
	CodeNotFound     = "not_found"
	CodeConflict     = "conflict"
	CodeTooLarge     = "too_large"
	CodeGone         = "gone"
	CodeInternal     = "internal"
	CodeUnavailable  = "unavailable"
	// CodeMethodNotAllowed answers a known path asked with another method
	// (405, with Allow).
	CodeMethodNotAllowed = "method_not_allowed"
	// CodeBackendFailed answers a connect with wait whose backend
	// terminated instead of becoming ready (502).
	CodeBackendFailed = "backend_failed"
)

// StateVersion is one saved state of a key, as listed by GET /v1/state and
// returned by POST /v1/state/restore. Version is opaque: pass it back as is.
type StateVersion struct {
	Version string    `json:"version"`
	Size    int64     `json:"size"`
	Fence   int64     `json:"fence"`
	SavedAt time.Time `json:"saved_at"`
	SHA256  string    `json:"sha256,omitempty"`
}

// StateVersionList is the answer to GET /v1/state?key=K.
type StateVersionList struct {
	Key      string         `json:"key"`
	Versions []StateVersion `json:"versions"`
}

// StateRestoreRequest is the body of POST /v1/state/restore.
type StateRestoreRequest struct {
	Key     string `json:"key"`
	Version string `json:"version"`
}

// Node is one replica of a Berth whose store several share, as listed by
// GET /v1/nodes. Its times are the database's.
type Node struct {
	ID             string    `json:"id"`
	ProxyAddr      string    `json:"proxy_addr"`
	APIAddr        string    `json:"api_addr"`
	Runtimes       []string  `json:"runtimes"`
	Capacity       int       `json:"capacity"`
	Drained        bool      `json:"drained"`
	Live           int       `json:"live"`
	StartedAt      time.Time `json:"started_at"`
	HeartbeatAt    time.Time `json:"heartbeat_at"`
	LeaseExpiresAt time.Time `json:"lease_expires_at"`
	// Alive: its lease had not expired when the list was read.
	Alive bool `json:"alive"`
}

// NodeList is the answer to GET /v1/nodes.
type NodeList struct {
	Nodes []Node `json:"nodes"`
}
