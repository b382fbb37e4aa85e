package server

import (
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
)

func TestDecodeStrict(t *testing.T) {
	tests := []struct {
		name, body, field string
	}{
		{"ok", `{"key":"a","spawn":{"command":["x"]}}`, ""},
		{"empty", ``, "body"},
		{"malformed", `{"key":`, "body"},
		{"unknown field", `{"key":"a","bogus":1}`, "bogus"},
		{"unknown nested", `{"spawn":{"comand":["x"]}}`, "spawn.comand"},
		{"unknown deeper", `{"spawn":{"command":["x"],"resources":{"gpu":1}}}`, "spawn.resources.gpu"},
		{"wrong type", `{"key":5}`, "key"},
		{"two objects", `{"key":"a"}{"key":"b"}`, "body"},
		{"trailing junk", `{"key":"a"} x`, "body"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var req api.ConnectRequest
			err := decodeStrict(strings.NewReader(tt.body), &req)
			if tt.field == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			var he *HTTPError
			if !errors.As(err, &he) {
				t.Fatalf("got %v, want an HTTPError", err)
			}
			if he.Status != http.StatusBadRequest || he.Field != tt.field {
				t.Errorf("got status %d field %q, want 400 field %q", he.Status, he.Field, tt.field)
			}
		})
	}
}

// FuzzDecodeConnect feeds arbitrary bodies through the same decoding and
// validation a connect request gets: it must never panic, and anything it
// accepts must be a valid request.
func FuzzDecodeConnect(f *testing.F) {
	for _, s := range []string{
		`{"key":"doc-42","spawn":{"command":["./server","--port","${PORT}"],"max_idle_seconds":5}}`,
		`{"key":"../../x","spawn":{"image":"a:1","resources":{"memory_mb":-1}}}`,
		`{"spawn":{"command":[]},"wait":true,"wait_timeout_seconds":-4}`,
		`[]`, `null`, `{"key":null}`, `{"spawn":{"env":{"PORT":"1"}}}`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		var req api.ConnectRequest
		if err := decodeStrict(strings.NewReader(body), &req); err != nil {
			if toHTTPError(err).Status != http.StatusBadRequest {
				t.Fatalf("decode error %v is not a 400", err)
			}
			return
		}
		err := validateConnect(&req)
		if err == nil {
			if req.Key != "" && berth.ValidateKey(req.Key) != nil {
				t.Fatalf("accepted invalid key %q", req.Key)
			}
			if req.Spawn != nil && len(req.Spawn.Command) == 0 && req.Spawn.Image == "" {
				t.Fatal("accepted a spawn with nothing to run")
			}
			return
		}
		var fe *berth.FieldError
		if !errors.As(err, &fe) || fe.Field == "" {
			t.Fatalf("validation error %v does not name a field", err)
		}
	})
}
