package sdk

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"
)

// ClaimPath is where Berth POSTs a pooled backend's claim.
const ClaimPath = "/.berth/claim"

// Identity is who this backend is: the key it serves, its fencing token,
// its secret and, in state mode blob, its state URL. A backend spawned
// for its key has it in its environment from the start; a backend started
// by a warm pool (BERTH_POOL set) learns it when a connect claims it.
type Identity struct {
	BackendID    string `json:"backend_id"`
	Pool         string `json:"pool,omitempty"`
	Key          string `json:"key"`
	User         string `json:"user,omitempty"`
	FencingToken int64  `json:"fencing_token"`
	Secret       string `json:"secret"`
	StateURL     string `json:"state_url,omitempty"`
}

// Client returns a Client for the identity's state, or ErrNotConfigured
// when it has no state URL (state mode is not blob).
func (id *Identity) Client() (*Client, error) {
	if id.StateURL == "" {
		return nil, ErrNotConfigured
	}
	return &Client{URL: id.StateURL, Secret: id.Secret, HTTP: &http.Client{Timeout: 5 * time.Minute}}, nil
}

// Pooled reports whether this backend was started by a warm pool, and so
// gets its identity at claim time.
func Pooled() bool { return os.Getenv("BERTH_POOL") != "" }

// claim is this process's identity: a process is one backend.
var claim = struct {
	mu   sync.Mutex
	id   *Identity
	done chan struct{}
}{done: make(chan struct{})}

// Claimed returns this backend's identity: at once for a backend spawned
// for its key, and for a pooled one once ClaimHandler accepted its claim,
// waiting until then or until ctx ends.
func Claimed(ctx context.Context) (*Identity, error) {
	if !Pooled() {
		fence, _ := strconv.ParseInt(os.Getenv("BERTH_FENCING_TOKEN"), 10, 64)
		return &Identity{
			BackendID: os.Getenv("BERTH_BACKEND_ID"), Key: os.Getenv("BERTH_KEY"), FencingToken: fence,
			Secret: os.Getenv("BERTH_SECRET"), StateURL: os.Getenv("BERTH_STATE_URL"),
		}, nil
	}
	select {
	case <-claim.done:
		claim.mu.Lock()
		defer claim.mu.Unlock()
		id := *claim.id
		return &id, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// ClaimHandler serves POST /.berth/claim for a pooled backend. Mount it at
// ClaimPath, beside the backend's own routes. When Berth claims this
// backend, load runs with its new identity and should load the key's state
// (Identity.Client, then Client.Load); the claim is answered 204 when load
// returns nil, and only then does Berth route the key's users here. An
// error from load answers 500: Berth stops this backend and serves the
// connect with another. load may be nil.
//
// A claim whose sender went away before load returned is not taken:
// Berth, restarted, sends it again. A claim must carry "Authorization:
// Bearer $BERTH_CLAIM_TOKEN". A second
// claim with the same key and fencing token (Berth repeats one it lost the
// answer to) is answered 204 again without calling load; any other after
// the first is refused with 409: a backend serves one key in its life.
func ClaimHandler(load func(ctx context.Context, id *Identity) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			http.Error(w, "use POST", http.StatusMethodNotAllowed)
			return
		}
		token := os.Getenv("BERTH_CLAIM_TOKEN")
		if token == "" {
			http.Error(w, "this backend was not started by a pool", http.StatusConflict)
			return
		}
		want, got := sha256.Sum256([]byte("Bearer "+token)), sha256.Sum256([]byte(r.Header.Get("Authorization")))
		if subtle.ConstantTimeCompare(want[:], got[:]) != 1 {
			http.Error(w, "wrong or missing claim token", http.StatusUnauthorized)
			return
		}
		var id Identity
		if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&id); err != nil {
			http.Error(w, "bad claim body: "+err.Error(), http.StatusBadRequest)
			return
		}
		if id.Key == "" || id.Secret == "" {
			http.Error(w, "a claim needs a key and a secret", http.StatusBadRequest)
			return
		}
		claim.mu.Lock()
		defer claim.mu.Unlock()
		if prev := claim.id; prev != nil {
			if prev.Key == id.Key && prev.FencingToken == id.FencingToken {
				w.WriteHeader(http.StatusNoContent)
				return
			}
			http.Error(w, fmt.Sprintf("already claimed for key %s", prev.Key), http.StatusConflict)
			return
		}
		if load != nil {
			if err := load(r.Context(), &id); err != nil {
				http.Error(w, "claim: "+err.Error(), http.StatusInternalServerError)
				return
			}
		}
		if r.Context().Err() != nil {
			// Berth went away before the answer: it does not know this
			// claim happened, and repeats it when it comes back.
			return
		}
		claim.id = &id
		close(claim.done)
		w.WriteHeader(http.StatusNoContent)
	})
}

// LoadOnClaim is a load function for ClaimHandler that loads the key's
// saved state and gives it to into (nil when the key has none yet).
func LoadOnClaim(into func(state []byte)) func(ctx context.Context, id *Identity) error {
	return func(ctx context.Context, id *Identity) error {
		c, err := id.Client()
		if errors.Is(err, ErrNotConfigured) {
			into(nil)
			return nil
		}
		data, err := c.Load(ctx)
		if errors.Is(err, ErrNoState) {
			into(nil)
			return nil
		}
		if err != nil {
			return err
		}
		into(data)
		return nil
	}
}
