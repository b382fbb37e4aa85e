package server

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
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

// TestDecodeStrict_Messages: what encoding/json would let through or
// word in Go's terms is refused with a message that names the field and
// says what it takes.
func TestDecodeStrict_Messages(t *testing.T) {
	spawn := func(extra string) string { return `{"key":"a","spawn":{"command":["x"],` + extra + `}}` }
	tests := []struct {
		name, body, field string
		want              []string // in the message
	}{
		{"huge max_idle_seconds", spawn(`"max_idle_seconds":1e30`), "spawn.max_idle_seconds", []string{"between 0 and 604800"}},
		{"fractional grace_seconds", spawn(`"grace_seconds":1.5`), "spawn.grace_seconds", []string{"integer", "between 0 and 3600"}},
		{"huge lifetime_seconds", spawn(`"lifetime_seconds":99999999999999999999`), "spawn.lifetime_seconds", []string{"604800"}},
		{"huge memory_mb", spawn(`"resources":{"memory_mb":-1e300}`), "spawn.resources.memory_mb", []string{"between 0 and 1048576"}},
		{"fractional save interval", spawn(`"state":{"save_interval_seconds":0.5}`), "spawn.state.save_interval_seconds", []string{"86400"}},
		{"huge wait_timeout_seconds", `{"key":"a","wait_timeout_seconds":1e30}`, "wait_timeout_seconds", []string{"3600"}},
		{"duplicate key", `{"key":"a","key":"b"}`, "key", []string{"more than once"}},
		{"duplicate key, other case", `{"key":"a","KEY":"b"}`, "key", []string{"more than once"}},
		{"duplicate spawn", `{"spawn":{"command":["x"]},"spawn":{"image":"y"}}`, "spawn", []string{"more than once"}},
		{"duplicate in spawn", spawn(`"image":"a","image":"b"`), "spawn.image", []string{"more than once"}},
		{"duplicate in env", spawn(`"env":{"A":"1","B":"2","A":"3"}`), "spawn.env.A", []string{"more than once"}},
		{"null env value", spawn(`"env":{"A":null}`), "spawn.env.A", []string{"null"}},
		{"null argument", `{"spawn":{"command":["x",null]}}`, "spawn.command[1]", []string{"null"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var req api.ConnectRequest
			err := decodeStrict(strings.NewReader(tt.body), &req)
			var he *HTTPError
			if !errors.As(err, &he) {
				t.Fatalf("%s: got %v, want an HTTPError", tt.body, err)
			}
			if he.Status != http.StatusBadRequest || he.Code != api.CodeBadRequest || he.Field != tt.field {
				t.Errorf("%s: got %d %s field %q, want 400 bad_request field %q", tt.body, he.Status, he.Code, he.Field, tt.field)
			}
			for _, w := range append(tt.want, tt.field+": ") {
				if !strings.Contains(he.Message, w) {
					t.Errorf("%s: message %q does not say %q", tt.body, he.Message, w)
				}
			}
			for _, bad := range []string{"unmarshal", "Go ", "not number", "json:"} {
				if strings.Contains(he.Message, bad) {
					t.Errorf("%s: message %q speaks Go (%q)", tt.body, he.Message, bad)
				}
			}
		})
	}
	// Distinct keys that differ in case are distinct variables, and null
	// means "not given" for a field of the request itself.
	for _, body := range []string{
		spawn(`"env":{"A":"1","a":"2"}`),
		spawn(`"max_idle_seconds":null,"image":null`),
	} {
		var req api.ConnectRequest
		if err := decodeStrict(strings.NewReader(body), &req); err != nil {
			t.Errorf("%s: %v, want it accepted", body, err)
		}
	}
}

// TestDecodeJSON_TooLarge: a body over MaxBodyBytes is 413 too_large,
// after reading no more than the limit and a byte.
func TestDecodeJSON_TooLarge(t *testing.T) {
	body := `{"key":"a","user":"` + strings.Repeat("u", MaxBodyBytes) + `"}`
	for _, length := range []int64{int64(len(body)), -1} {
		src := &countingReader{r: strings.NewReader(body)}
		r := httptest.NewRequest(http.MethodPost, "/v1/connect", src)
		r.ContentLength = length
		var req api.ConnectRequest
		err := DecodeJSON(httptest.NewRecorder(), r, &req)
		var he *HTTPError
		if !errors.As(err, &he) || he.Status != http.StatusRequestEntityTooLarge || he.Code != api.CodeTooLarge || he.Field != "body" {
			t.Errorf("Content-Length %d: got %#v, want 413 too_large on body", length, err)
		}
		if src.n > MaxBodyBytes+1 {
			t.Errorf("Content-Length %d: read %d bytes, want at most %d", length, src.n, MaxBodyBytes+1)
		}
	}
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
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
			if req.Key != "" && (berth.ValidateKey(req.Key) != nil || berth.Reserved(req.Key)) {
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

// TestValidateConnect_ReservedKey: keys under @berth/ hold Berth's own
// blobs (the edge's certificates); no backend may take one.
func TestValidateConnect_ReservedKey(t *testing.T) {
	for key, ok := range map[string]bool{"@berth/acme-index": false, "@berth/acme/x": false, "@berth": true, "doc/@berth/x": true} {
		err := validateConnect(&api.ConnectRequest{Key: key})
		var fe *berth.FieldError
		if ok != (err == nil) || (!ok && (!errors.As(err, &fe) || fe.Field != "key")) {
			t.Errorf("key %q: %v, want accepted=%v (refused naming key)", key, err, ok)
		}
	}
}
