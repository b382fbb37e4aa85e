package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/berthhq/berth"
)

// Client talks to a Berth server's control API. It is safe for concurrent use.
type Client struct {
	base   string
	apiKey string
	hc     *http.Client
}

// NewClient returns a client for the control API at baseURL (for example
// "http://127.0.0.1:7070"). apiKey may be empty (berth dev needs none).
// httpClient may be nil for http.DefaultClient; it should have no overall
// Timeout, because logs and events stream for as long as the backend lives —
// bound calls with their context instead.
func NewClient(baseURL, apiKey string, httpClient *http.Client) *Client {
	if httpClient == nil {
		httpClient = http.DefaultClient
	}
	return &Client{base: strings.TrimRight(baseURL, "/"), apiKey: apiKey, hc: httpClient}
}

// BaseURL is the control API address the client talks to.
func (c *Client) BaseURL() string { return c.base }

// Error is a non-2xx answer from the server.
type Error struct {
	Status  int    // HTTP status
	Code    string // one of the Code* constants; empty if the body was not an ErrorBody
	Message string
	Field   string // the request field at fault, if any
	// Body is the answer as it came (up to 64 KiB), for error bodies that
	// carry more than the fields above.
	Body []byte
	// For backend_failed (a connect with wait whose backend ended): the
	// backend, why it ended and the last lines of its output.
	BackendID string
	Reason    berth.Reason
	ExitCode  *int
	Logs      string
}

func (e *Error) Error() string {
	msg := e.Message
	if e.Field != "" && !strings.HasPrefix(msg, e.Field) {
		msg = e.Field + ": " + msg
	}
	if e.Logs != "" {
		msg += "; its last output:\n" + e.Logs
	}
	if e.Code == "" {
		return fmt.Sprintf("%d: %s", e.Status, msg)
	}
	return fmt.Sprintf("%d %s: %s", e.Status, e.Code, msg)
}

// Is lets callers test API errors against Berth's sentinels, for example
// errors.Is(err, berth.ErrNotFound).
func (e *Error) Is(target error) bool {
	switch target {
	case berth.ErrNotFound:
		return e.Status == http.StatusNotFound
	case berth.ErrConflict:
		return e.Status == http.StatusConflict
	}
	return false
}

// Connect returns the live backend for req.Key, or spawns one from req.Spawn.
func (c *Client) Connect(ctx context.Context, req ConnectRequest) (*ConnectResponse, error) {
	var resp ConnectResponse
	if err := c.call(ctx, http.MethodPost, "/v1/connect", nil, req, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

// Backend returns one backend; the error matches berth.ErrNotFound if there
// is none.
func (c *Client) Backend(ctx context.Context, id string) (*berth.Backend, error) {
	var b berth.Backend
	if err := c.call(ctx, http.MethodGet, backendPath(id, ""), nil, nil, &b); err != nil {
		return nil, err
	}
	return &b, nil
}

// Backends lists backends, newest first. Empty key or state match everything.
func (c *Client) Backends(ctx context.Context, key string, state berth.State) ([]*berth.Backend, error) {
	q := url.Values{}
	if state != "" {
		q.Set("state", string(state))
	}
	return c.backends(ctx, key, q)
}

// LiveBackends lists the backends that are not terminated, newest first; an
// empty key matches every key.
func (c *Client) LiveBackends(ctx context.Context, key string) ([]*berth.Backend, error) {
	return c.backends(ctx, key, url.Values{"live": {"true"}})
}

func (c *Client) backends(ctx context.Context, key string, q url.Values) ([]*berth.Backend, error) {
	if key != "" {
		q.Set("key", key)
	}
	var list BackendList
	if err := c.call(ctx, http.MethodGet, "/v1/backends", q, nil, &list); err != nil {
		return nil, err
	}
	return list.Backends, nil
}

// Terminate asks the server to stop a backend: gracefully, or at once if hard.
// It returns when the request is accepted, not when the backend is terminated;
// follow Events for that.
func (c *Client) Terminate(ctx context.Context, id string, hard bool) error {
	return c.call(ctx, http.MethodPost, backendPath(id, "/terminate"), nil, TerminateRequest{Hard: hard}, nil)
}

// Events calls fn with each state event of a backend: its history first, then
// live changes. It returns nil once fn has seen the terminated event, the
// first error fn returns, or an error if the stream ends before terminated.
func (c *Client) Events(ctx context.Context, id string, fn func(StateEvent) error) error {
	resp, err := c.send(ctx, http.MethodGet, backendPath(id, "/events"), nil, nil, "text/event-stream")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	r := newSSEReader(resp.Body)
	for {
		ev, err := r.Next()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("events of %s: stream ended before the backend terminated: %w", id, err)
		}
		if ev.Type != "state" {
			continue
		}
		var se StateEvent
		if err := json.Unmarshal([]byte(ev.Data), &se); err != nil {
			return fmt.Errorf("events of %s: decode state event: %w", id, err)
		}
		if err := fn(se); err != nil {
			return err
		}
		if se.State == berth.StateTerminated {
			return nil
		}
	}
}

// Logs copies a backend's stdout and stderr to w. With follow it keeps
// copying until the backend's output ends or ctx is done.
func (c *Client) Logs(ctx context.Context, id string, follow bool, w io.Writer) error {
	var q url.Values
	if follow {
		q = url.Values{"follow": {"true"}}
	}
	resp, err := c.send(ctx, http.MethodGet, backendPath(id, "/logs"), q, nil, "")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(w, resp.Body); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("logs of %s: %w", id, err)
	}
	return nil
}

// Health returns nil if the server answers GET /healthz with 2xx.
func (c *Client) Health(ctx context.Context) error {
	return c.call(ctx, http.MethodGet, "/healthz", nil, nil, nil)
}

// StateVersions lists the saved states of a key.
func (c *Client) StateVersions(ctx context.Context, key string) ([]StateVersion, error) {
	var list StateVersionList
	if err := c.call(ctx, http.MethodGet, "/v1/state", url.Values{"key": {key}}, nil, &list); err != nil {
		return nil, err
	}
	return list.Versions, nil
}

// StateData copies one saved state of a key to w; an empty version means the
// current one. The error matches berth.ErrNotFound if there is no such save.
func (c *Client) StateData(ctx context.Context, key, version string, w io.Writer) error {
	q := url.Values{"key": {key}}
	if version != "" {
		q.Set("version", version)
	}
	resp, err := c.send(ctx, http.MethodGet, "/v1/state/data", q, nil, "")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(w, resp.Body); err != nil {
		return fmt.Errorf("state data of %s: %w", key, err)
	}
	return nil
}

// StateRestore makes an earlier save of a key the current one and returns
// the new current version. The error matches berth.ErrConflict while a live
// backend holds the key.
func (c *Client) StateRestore(ctx context.Context, key, version string) (*StateVersion, error) {
	var v StateVersion
	if err := c.call(ctx, http.MethodPost, "/v1/state/restore", nil, StateRestoreRequest{Key: key, Version: version}, &v); err != nil {
		return nil, err
	}
	return &v, nil
}

func backendPath(id, suffix string) string {
	return "/v1/backends/" + url.PathEscape(id) + suffix
}

// call sends a request with an optional JSON body and decodes a JSON answer
// into out, if out is not nil.
func (c *Client) call(ctx context.Context, method, path string, q url.Values, body, out any) error {
	resp, err := c.send(ctx, method, path, q, body, "application/json")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // lets the connection be reused
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode response: %w", method, path, err)
	}
	return nil
}

// send performs a request and returns the response if its status is 2xx;
// otherwise it returns an *Error. Transport errors are wrapped, so callers can
// still find the *url.Error and *net.OpError inside.
func (c *Client) send(ctx context.Context, method, path string, q url.Values, body any, accept string) (*http.Response, error) {
	u := c.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("%s %s: encode request: %w", method, path, err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	if c.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+c.apiKey)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err // *url.Error already names the method and URL
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		return nil, decodeError(resp)
	}
	return resp, nil
}

// decodeError turns a non-2xx response into an *Error, from the JSON error
// body when there is one and from the raw text otherwise.
func decodeError(resp *http.Response) error {
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	e := &Error{Status: resp.StatusCode, Body: raw}
	var body ErrorBody
	if json.Unmarshal(raw, &body) == nil && (body.Error.Code != "" || body.Error.Message != "") {
		d := body.Error
		e.Code, e.Message, e.Field = d.Code, d.Message, d.Field
		e.BackendID, e.Reason, e.ExitCode, e.Logs = d.BackendID, d.Reason, d.ExitCode, d.Logs
	} else {
		e.Message = strings.TrimSpace(string(raw))
	}
	if e.Message == "" {
		e.Message = http.StatusText(resp.StatusCode)
	}
	return e
}

// Nodes lists the replicas sharing the server's store.
func (c *Client) Nodes(ctx context.Context) ([]Node, error) {
	var out NodeList
	if err := c.call(ctx, http.MethodGet, "/v1/nodes", nil, nil, &out); err != nil {
		return nil, err
	}
	return out.Nodes, nil
}

// Drain stops new backends from being placed on a node (drained true), or
// lets them be again.
func (c *Client) Drain(ctx context.Context, node string, drained bool) error {
	verb := "/drain"
	if !drained {
		verb = "/undrain"
	}
	return c.call(ctx, http.MethodPost, "/v1/nodes/"+url.PathEscape(node)+verb, nil, nil, nil)
}
