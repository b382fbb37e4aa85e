package api

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/berthhq/berth"
)

// PoolRequest is the body of PUT /v1/pools/{name}.
type PoolRequest struct {
	Spawn    *berth.SpawnConfig `json:"spawn"`
	MinReady int                `json:"min_ready"`
	Max      int                `json:"max,omitempty"`
	// Schedule sets min_ready during daily UTC windows.
	Schedule []berth.PoolWindow `json:"schedule,omitempty"`
}

// IntRange implements jsonbody.Ranger for the spawn template's fields.
func (*PoolRequest) IntRange(path string) (string, bool) {
	if sub, ok := strings.CutPrefix(path, "spawn."); ok {
		return berth.IntRange(sub)
	}
	return "", false
}

// Pool is a pool as the control API shows it: its definition and, on
// the node that answers, how many of its backends are ready (unclaimed),
// starting, and claimed (live, given a key).
type Pool struct {
	Name     string             `json:"name"`
	Spawn    berth.SpawnConfig  `json:"spawn"`
	MinReady int                `json:"min_ready"`
	Max      int                `json:"max,omitempty"`
	Schedule []berth.PoolWindow `json:"schedule,omitempty"`
	// MinReadyNow is min_ready as the schedule has it now.
	MinReadyNow int       `json:"min_ready_now"`
	Ready       int       `json:"ready"`
	Starting    int       `json:"starting"`
	Claimed     int       `json:"claimed"`
	CreatedAt   time.Time `json:"created_at"`
	UpdatedAt   time.Time `json:"updated_at"`
}

// PoolList is the answer to GET /v1/pools.
type PoolList struct {
	Pools []Pool `json:"pools"`
}

// ClaimRequest is the body Berth POSTs to a pooled backend's
// /.berth/claim, with "Authorization: Bearer $BERTH_CLAIM_TOKEN": the
// identity the backend learns at claim time (DESIGN.md, "Warm pools").
type ClaimRequest struct {
	BackendID    string `json:"backend_id"`
	Pool         string `json:"pool"`
	Key          string `json:"key"`
	User         string `json:"user,omitempty"`
	FencingToken int64  `json:"fencing_token"`
	// Secret authenticates the backend to the backend API from now on.
	Secret string `json:"secret"`
	// StateURL is set for state mode blob: GET and PUT it with the secret.
	StateURL string `json:"state_url,omitempty"`
}

// Pools lists the warm pools, with the answering node's counts.
func (c *Client) Pools(ctx context.Context) ([]Pool, error) {
	var out PoolList
	if err := c.call(ctx, http.MethodGet, "/v1/pools", nil, nil, &out); err != nil {
		return nil, err
	}
	return out.Pools, nil
}

// Pool returns one warm pool.
func (c *Client) Pool(ctx context.Context, name string) (*Pool, error) {
	var out Pool
	if err := c.call(ctx, http.MethodGet, "/v1/pools/"+url.PathEscape(name), nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// PutPool creates or replaces a warm pool.
func (c *Client) PutPool(ctx context.Context, name string, req PoolRequest) (*Pool, error) {
	var out Pool
	if err := c.call(ctx, http.MethodPut, "/v1/pools/"+url.PathEscape(name), nil, req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// DeletePool deletes a warm pool; its unclaimed backends stop.
func (c *Client) DeletePool(ctx context.Context, name string) error {
	return c.call(ctx, http.MethodDelete, "/v1/pools/"+url.PathEscape(name), nil, nil, nil)
}
