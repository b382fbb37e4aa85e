package api

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/berthhq/berth"
)

// newTestClient serves h and returns a client for it with API key "k".
func newTestClient(t *testing.T, h http.HandlerFunc) *Client {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return NewClient(srv.URL+"/", "k", srv.Client())
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func TestClient_Connect(t *testing.T) {
	var got ConnectRequest
	c := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/connect" {
			t.Errorf("got %s %s, want POST /v1/connect", r.Method, r.URL.Path)
		}
		if h := r.Header.Get("Authorization"); h != "Bearer k" {
			t.Errorf("Authorization = %q, want %q", h, "Bearer k")
		}
		if err := json.NewDecoder(r.Body).Decode(&got); err != nil {
			t.Error(err)
		}
		writeJSON(w, http.StatusOK, ConnectResponse{BackendID: "bk_1", Key: got.Key, Spawned: true, State: berth.StateScheduled, URL: "http://p/tok/"})
	})
	req := ConnectRequest{Key: "doc/42", Spawn: &berth.SpawnConfig{Command: []string{"./server"}}, User: "alice"}
	resp, err := c.Connect(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, req) {
		t.Errorf("server got %+v, want %+v", got, req)
	}
	want := &ConnectResponse{BackendID: "bk_1", Key: "doc/42", Spawned: true, State: berth.StateScheduled, URL: "http://p/tok/"}
	if !reflect.DeepEqual(resp, want) {
		t.Errorf("Connect = %+v, want %+v", resp, want)
	}
}

func TestClient_NoAPIKey(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h, ok := r.Header["Authorization"]; ok {
			t.Errorf("Authorization sent without an API key: %q", h)
		}
		if r.URL.Path != "/healthz" {
			t.Errorf("path = %q, want /healthz", r.URL.Path)
		}
	}))
	defer srv.Close()
	if err := NewClient(srv.URL, "", nil).Health(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestClient_Backends(t *testing.T) {
	tests := []struct {
		key       string
		state     berth.State
		wantQuery string
	}{
		{"", "", ""},
		{"a/b c", "", "key=a%2Fb+c"},
		{"doc", berth.StateReady, "key=doc&state=ready"},
	}
	for _, tt := range tests {
		t.Run(tt.wantQuery, func(t *testing.T) {
			c := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/v1/backends" || r.URL.RawQuery != tt.wantQuery {
					t.Errorf("got %s?%s, want /v1/backends?%s", r.URL.Path, r.URL.RawQuery, tt.wantQuery)
				}
				writeJSON(w, http.StatusOK, BackendList{Backends: []*berth.Backend{{ID: "bk_1", State: berth.StateReady}}})
			})
			got, err := c.Backends(context.Background(), tt.key, tt.state)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 || got[0].ID != "bk_1" {
				t.Errorf("Backends = %+v, want one backend bk_1", got)
			}
		})
	}
}

func TestClient_LiveBackends(t *testing.T) {
	c := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		if want := "key=doc&live=true"; r.URL.RawQuery != want {
			t.Errorf("query = %q, want %q", r.URL.RawQuery, want)
		}
		writeJSON(w, http.StatusOK, BackendList{})
	})
	if _, err := c.LiveBackends(context.Background(), "doc"); err != nil {
		t.Fatal(err)
	}
}

func TestClient_Backend(t *testing.T) {
	c := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/backends/bk_1" {
			t.Errorf("path = %q", r.URL.Path)
		}
		writeJSON(w, http.StatusOK, berth.Backend{ID: "bk_1", Key: "doc", State: berth.StateReady})
	})
	b, err := c.Backend(context.Background(), "bk_1")
	if err != nil {
		t.Fatal(err)
	}
	if b.ID != "bk_1" || b.Key != "doc" || b.State != berth.StateReady {
		t.Errorf("Backend = %+v", b)
	}
}

func TestClient_Terminate(t *testing.T) {
	for _, hard := range []bool{false, true} {
		var got TerminateRequest
		c := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodPost || r.URL.Path != "/v1/backends/bk_1/terminate" {
				t.Errorf("got %s %s", r.Method, r.URL.Path)
			}
			_ = json.NewDecoder(r.Body).Decode(&got)
			w.WriteHeader(http.StatusAccepted)
		})
		if err := c.Terminate(context.Background(), "bk_1", hard); err != nil {
			t.Fatal(err)
		}
		if got.Hard != hard {
			t.Errorf("hard = %v, want %v", got.Hard, hard)
		}
	}
}

func TestClient_Errors(t *testing.T) {
	tests := []struct {
		name   string
		status int
		body   string
		want   *Error
		msg    string
	}{
		{
			name: "json", status: 404,
			body: `{"error":{"code":"not_found","message":"backend bk_x not found"}}`,
			want: &Error{Status: 404, Code: "not_found", Message: "backend bk_x not found"},
			msg:  "404 not_found: backend bk_x not found",
		},
		{
			name: "field", status: 400,
			body: `{"error":{"code":"bad_request","message":"give a command","field":"spawn.command"}}`,
			want: &Error{Status: 400, Code: "bad_request", Message: "give a command", Field: "spawn.command"},
			msg:  "400 bad_request: spawn.command: give a command",
		},
		{
			name: "field already in message", status: 400,
			body: `{"error":{"code":"bad_request","message":"key: too long","field":"key"}}`,
			want: &Error{Status: 400, Code: "bad_request", Message: "key: too long", Field: "key"},
			msg:  "400 bad_request: key: too long",
		},
		{
			name: "backend failed", status: 502,
			body: `{"error":{"code":"backend_failed","message":"backend bk_x terminated (crashed) before it was ready: exit code 3","backend_id":"bk_x","reason":"crashed","exit_code":3,"logs":"boom\nbye"}}`,
			want: &Error{Status: 502, Code: "backend_failed", Message: "backend bk_x terminated (crashed) before it was ready: exit code 3",
				BackendID: "bk_x", Reason: berth.ReasonCrashed, ExitCode: new(3), Logs: "boom\nbye"},
			msg: "502 backend_failed: backend bk_x terminated (crashed) before it was ready: exit code 3; its last output:\nboom\nbye",
		},
		{
			name: "raw text", status: 502, body: "upstream broke\n",
			want: &Error{Status: 502, Message: "upstream broke"},
			msg:  "502: upstream broke",
		},
		{
			name: "empty", status: 503, body: "",
			want: &Error{Status: 503, Message: "Service Unavailable"},
			msg:  "503: Service Unavailable",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tt.status)
				io.WriteString(w, tt.body)
			})
			_, err := c.Backend(context.Background(), "bk_x")
			var got *Error
			if !errors.As(err, &got) {
				t.Fatalf("error %v (%T) is not an *Error", err, err)
			}
			tt.want.Body = []byte(tt.body) // the answer as it came
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("error = %+v, want %+v", got, tt.want)
			}
			if err.Error() != tt.msg {
				t.Errorf("Error() = %q, want %q", err.Error(), tt.msg)
			}
			if got, want := errors.Is(err, berth.ErrNotFound), tt.status == 404; got != want {
				t.Errorf("errors.Is(err, berth.ErrNotFound) = %v, want %v", got, want)
			}
		})
	}
}

// chunkedSSE writes stream in pieces of n bytes, flushing each, so events
// and even lines arrive split across network reads.
func chunkedSSE(t *testing.T, stream string, n int) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/backends/bk_1/events" {
			t.Errorf("path = %q", r.URL.Path)
		}
		if a := r.Header.Get("Accept"); a != "text/event-stream" {
			t.Errorf("Accept = %q", a)
		}
		w.Header().Set("Content-Type", "text/event-stream")
		f := w.(http.Flusher)
		for len(stream) > 0 {
			k := min(n, len(stream))
			io.WriteString(w, stream[:k])
			f.Flush()
			stream = stream[k:]
		}
	}
}

const fullStream = ": hello\n\n" +
	"id: 1\nevent: state\ndata: {\"state\":\"scheduled\",\"at\":\"2025-01-01T00:00:00Z\"}\n\n" +
	": keepalive\n\n" +
	"event: other\ndata: {\"state\":\"ready\"}\n\n" +
	"id: 2\r\nevent: state\r\ndata: {\"state\":\"ready\",\r\ndata: \"at\":\"2025-01-01T00:00:01Z\"}\r\n\r\n" +
	"event: state\ndata: {\"state\":\"terminated\",\"reason\":\"crashed\",\"exit_code\":3,\"at\":\"2025-01-01T00:00:02Z\"}\n\n"

func TestClient_Events(t *testing.T) {
	three := 3
	want := []StateEvent{
		{State: berth.StateScheduled, At: "2025-01-01T00:00:00Z"},
		{State: berth.StateReady, At: "2025-01-01T00:00:01Z"},
		{State: berth.StateTerminated, Reason: berth.ReasonCrashed, ExitCode: &three, At: "2025-01-01T00:00:02Z"},
	}
	for _, n := range []int{1, 7, len(fullStream)} {
		c := newTestClient(t, chunkedSSE(t, fullStream, n))
		var got []StateEvent
		err := c.Events(context.Background(), "bk_1", func(e StateEvent) error {
			got = append(got, e)
			return nil
		})
		if err != nil {
			t.Fatalf("chunks of %d: %v", n, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("chunks of %d: events = %+v, want %+v", n, got, want)
		}
	}
}

func TestClient_EventsEndsEarly(t *testing.T) {
	c := newTestClient(t, chunkedSSE(t, "event: state\ndata: {\"state\":\"ready\"}\n\n", 5))
	err := c.Events(context.Background(), "bk_1", func(StateEvent) error { return nil })
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("err = %v, want io.ErrUnexpectedEOF", err)
	}
}

func TestClient_EventsStopsOnCallbackError(t *testing.T) {
	stop := errors.New("stop")
	c := newTestClient(t, chunkedSSE(t, fullStream, 64))
	calls := 0
	err := c.Events(context.Background(), "bk_1", func(StateEvent) error {
		calls++
		return stop
	})
	if err != stop || calls != 1 {
		t.Errorf("err = %v after %d calls, want %v after 1", err, calls, stop)
	}
}

func TestSSEReader(t *testing.T) {
	r := newSSEReader(iotest.OneByteReader(strings.NewReader(
		"data: a\n\n:c\ndata\ndata:b\n\nevent: x\r\n\r\nid: 9\nevent: e\ndata:  two spaces\n\ndata: unterminated")))
	want := []sseEvent{
		{Type: "message", Data: "a"},
		{Type: "message", Data: "\nb"},
		{Type: "e", Data: " two spaces", ID: "9"},
	}
	for i, w := range want {
		got, err := r.Next()
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		if got != w {
			t.Errorf("event %d = %+v, want %+v", i, got, w)
		}
	}
	if _, err := r.Next(); err != io.EOF {
		t.Errorf("after last event: err = %v, want io.EOF", err)
	}
}

func TestClient_Logs(t *testing.T) {
	for _, follow := range []bool{false, true} {
		c := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/v1/backends/bk_1/logs" {
				t.Errorf("path = %q", r.URL.Path)
			}
			if got, want := r.URL.Query().Get("follow") == "true", follow; got != want {
				t.Errorf("follow = %v, want %v", got, want)
			}
			io.WriteString(w, "line 1\nline 2\n")
		})
		var b strings.Builder
		if err := c.Logs(context.Background(), "bk_1", follow, &b); err != nil {
			t.Fatal(err)
		}
		if b.String() != "line 1\nline 2\n" {
			t.Errorf("logs = %q", b.String())
		}
	}
}

func TestClient_State(t *testing.T) {
	var restored StateRestoreRequest
	c := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		switch r.Method + " " + r.URL.Path {
		case "GET /v1/state":
			if q.Get("key") != "tenant/doc" {
				t.Errorf("key = %q", q.Get("key"))
			}
			writeJSON(w, http.StatusOK, StateVersionList{Key: "tenant/doc", Versions: []StateVersion{{Version: "v2", Size: 5}, {Version: "v1"}}})
		case "GET /v1/state/data":
			_, hasVersion := q["version"]
			io.WriteString(w, q.Get("key")+"@"+q.Get("version")+" "+strconv.FormatBool(hasVersion))
		case "POST /v1/state/restore":
			_ = json.NewDecoder(r.Body).Decode(&restored)
			writeJSON(w, http.StatusOK, StateVersion{Version: "v3"})
		default:
			t.Errorf("unexpected %s %s", r.Method, r.URL)
		}
	})
	ctx := context.Background()
	vs, err := c.StateVersions(ctx, "tenant/doc")
	if err != nil {
		t.Fatal(err)
	}
	if want := []StateVersion{{Version: "v2", Size: 5}, {Version: "v1"}}; !reflect.DeepEqual(vs, want) {
		t.Errorf("versions = %+v, want %+v", vs, want)
	}
	for version, want := range map[string]string{"": "tenant/doc@ false", "v1": "tenant/doc@v1 true"} {
		var b strings.Builder
		if err := c.StateData(ctx, "tenant/doc", version, &b); err != nil {
			t.Fatal(err)
		}
		if b.String() != want {
			t.Errorf("StateData(version %q) = %q, want %q", version, b.String(), want)
		}
	}
	v, err := c.StateRestore(ctx, "tenant/doc", "v1")
	if err != nil {
		t.Fatal(err)
	}
	if want := (StateRestoreRequest{Key: "tenant/doc", Version: "v1"}); restored != want {
		t.Errorf("restore body = %+v, want %+v", restored, want)
	}
	if v.Version != "v3" {
		t.Errorf("restored version = %q, want v3", v.Version)
	}
}
