// Package sdk is what a backend author imports to keep state across
// sessions with Berth (state mode blob): Load the saved state on start, let a
// Saver save it every few seconds when it changed, and save once more on
// SIGTERM/SIGINT before exiting.
//
// A backend started by a warm pool (BERTH_POOL set) learns its key, secret
// and state URL only when a connect claims it: mount ClaimHandler at
// ClaimPath to load the key's state then; Claimed and FromEnv see the
// claim's identity afterwards.
//
// It talks only to BERTH_STATE_URL with the backend's own secret; it never
// sees the blob store's credentials. A save refused because another backend
// now holds the key returns ErrFenced and is not retried.
package sdk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

var (
	// ErrNoState is returned by Load when the key has no saved state yet.
	ErrNoState = errors.New("sdk: no saved state")
	// ErrFenced is returned by Save when this backend no longer holds its
	// key: a newer backend took over, and this write was refused.
	ErrFenced = errors.New("sdk: this backend no longer holds its key")
	// ErrNotConfigured is returned when BERTH_STATE_URL is not set (the
	// backend was not spawned with state mode blob).
	ErrNotConfigured = errors.New("sdk: BERTH_STATE_URL is not set; spawn with \"state\": {\"mode\": \"blob\"}")
)

// Client talks to Berth's backend API.
type Client struct {
	URL    string
	Secret string
	HTTP   *http.Client
	// Retries bounds attempts per Save/Load on transient errors (default 8).
	Retries int
}

// FromEnv returns a Client configured from BERTH_STATE_URL and BERTH_SECRET,
// or, for a pooled backend, from its claim (ErrNotConfigured before it).
func FromEnv() (*Client, error) {
	u := os.Getenv("BERTH_STATE_URL")
	if u == "" && Pooled() {
		claim.mu.Lock()
		id := claim.id
		claim.mu.Unlock()
		if id == nil {
			return nil, ErrNotConfigured
		}
		return id.Client()
	}
	if u == "" {
		return nil, ErrNotConfigured
	}
	return &Client{URL: u, Secret: os.Getenv("BERTH_SECRET"), HTTP: &http.Client{Timeout: 5 * time.Minute}}, nil
}

// Load returns the saved state, or ErrNoState.
func (c *Client) Load(ctx context.Context) ([]byte, error) {
	var out []byte
	err := c.retry(ctx, func() (bool, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.URL, nil)
		if err != nil {
			return false, err
		}
		resp, err := c.do(req)
		if err != nil {
			return true, err
		}
		defer resp.Body.Close()
		switch {
		case resp.StatusCode == http.StatusOK:
			out, err = io.ReadAll(resp.Body)
			return true, err
		case resp.StatusCode == http.StatusNotFound:
			return false, ErrNoState
		case resp.StatusCode == http.StatusConflict:
			return false, ErrFenced
		}
		return transient(resp), statusErr("load", resp)
	})
	return out, err
}

// Save replaces the saved state with data, retrying transient failures with
// backoff. A 202 (Berth spooled the state because its blob store is down)
// counts as saved: Berth will not free the key until it is uploaded.
func (c *Client) Save(ctx context.Context, data []byte) error {
	return c.retry(ctx, func() (bool, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPut, c.URL, bytes.NewReader(data))
		if err != nil {
			return false, err
		}
		req.Header.Set("Content-Type", "application/octet-stream")
		resp, err := c.do(req)
		if err != nil {
			return true, err
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		switch resp.StatusCode {
		case http.StatusOK, http.StatusCreated, http.StatusAccepted, http.StatusNoContent:
			return false, nil
		case http.StatusConflict:
			return false, ErrFenced
		}
		return transient(resp), statusErr("save", resp)
	})
}

func (c *Client) do(req *http.Request) (*http.Response, error) {
	req.Header.Set("Authorization", "Bearer "+c.Secret)
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	return hc.Do(req)
}

// retry runs op until it succeeds, fails for good, or attempts run out.
func (c *Client) retry(ctx context.Context, op func() (retryable bool, err error)) error {
	attempts := c.Retries
	if attempts <= 0 {
		attempts = 8
	}
	backoff := 100 * time.Millisecond
	var err error
	for i := 0; i < attempts; i++ {
		var again bool
		again, err = op()
		if err == nil || !again {
			return err
		}
		select {
		case <-ctx.Done():
			return errors.Join(err, ctx.Err())
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
	return err
}

func transient(resp *http.Response) bool {
	return resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests
}

func statusErr(op string, resp *http.Response) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return fmt.Errorf("sdk: %s: %s: %s", op, resp.Status, strings.TrimSpace(string(body)))
}
