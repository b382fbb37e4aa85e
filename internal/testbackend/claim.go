package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/berthhq/berth/sdk"
)

// Pooled backends (BERTH_POOL set):
//
//	POST /.berth/claim    the claim (sdk.ClaimHandler): loads the key's
//	                      state (mode blob), then answers 204
//	GET /identity         JSON: who this backend is now (key, fence,
//	                      pool, claimed), the state it loaded on claim,
//	                      and preclaim_state_status
//	PUT /state            saves the body as the key's state (mode blob)
//
// Knobs:
//
//	TB_CLAIM_FAIL=1          answer claims 500
//	TB_CLAIM_DELAY_MS=N      take N ms to answer a claim
//	TB_PRECLAIM_API_URL=U    before listening, try to read state from the
//	                         backend API at U as this backend with what it
//	                         knows before a claim (its id, BERTH_CLAIM_TOKEN);
//	                         the status is preclaim_state_status

var claimed struct {
	mu       sync.Mutex
	loaded   *string
	preclaim int
}

func preclaimProbe() {
	base := os.Getenv("TB_PRECLAIM_API_URL")
	if base == "" {
		return
	}
	req, _ := http.NewRequest(http.MethodGet, base+"/v1/backends/"+os.Getenv("BERTH_BACKEND_ID")+"/state", nil)
	req.Header.Set("Authorization", "Bearer "+os.Getenv("BERTH_CLAIM_TOKEN"))
	resp, err := http.DefaultClient.Do(req)
	code := -1
	if err == nil {
		code = resp.StatusCode
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	} else {
		fmt.Fprintf(os.Stderr, "testbackend: preclaim probe: %v\n", err)
	}
	claimed.mu.Lock()
	claimed.preclaim = code
	claimed.mu.Unlock()
}

func mountClaim(m *http.ServeMux) {
	m.Handle(sdk.ClaimPath, sdk.ClaimHandler(func(ctx context.Context, id *sdk.Identity) error {
		time.Sleep(time.Duration(envInt("TB_CLAIM_DELAY_MS")) * time.Millisecond)
		if os.Getenv("TB_CLAIM_FAIL") == "1" {
			return errors.New("TB_CLAIM_FAIL is set")
		}
		err := sdk.LoadOnClaim(func(b []byte) {
			s := string(b)
			claimed.mu.Lock()
			claimed.loaded = &s
			claimed.mu.Unlock()
		})(ctx, id)
		if err == nil {
			auditLine(fmt.Sprintf("tb-audit claimed key=%s backend=%s fence=%d pid=%d", id.Key, id.BackendID, id.FencingToken, os.Getpid()))
		}
		return err
	}))
	m.HandleFunc("GET /identity", func(w http.ResponseWriter, r *http.Request) {
		out := map[string]any{"backend_id": os.Getenv("BERTH_BACKEND_ID"), "pool": os.Getenv("BERTH_POOL"), "claimed": false}
		ctx, cancel := context.WithTimeout(r.Context(), time.Millisecond)
		defer cancel()
		if id, err := sdk.Claimed(ctx); err == nil {
			out["key"], out["fencing_token"], out["claimed"] = id.Key, id.FencingToken, sdk.Pooled()
		}
		claimed.mu.Lock()
		if claimed.loaded != nil {
			out["loaded_state"] = *claimed.loaded
		}
		out["preclaim_state_status"] = claimed.preclaim
		claimed.mu.Unlock()
		writeJSON(w, out)
	})
	m.HandleFunc("PUT /state", func(w http.ResponseWriter, r *http.Request) {
		c, err := sdk.FromEnv()
		if err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		body, _ := io.ReadAll(r.Body)
		if err := c.Save(r.Context(), body); err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		reply(w, "saved "+strconv.Itoa(len(body))+" bytes")
	})
}

// auditLine appends line to TB_AUDIT_FILE, if set.
func auditLine(line string) {
	path := os.Getenv("TB_AUDIT_FILE")
	if path == "" {
		return
	}
	f, err := os.OpenFile(os.ExpandEnv(path), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o666)
	if err != nil {
		return
	}
	defer f.Close()
	f.Write([]byte(line + "\n"))
}
