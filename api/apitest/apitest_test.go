package apitest

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/berthhq/berth/api"
)

// TestLoad_openAPI is the document's own test: it parses as OpenAPI 3.1 and
// validates, and it describes every answer the checker relies on.
func TestLoad_openAPI(t *testing.T) {
	if _, err := Load(context.Background(), api.OpenAPI); err != nil {
		t.Fatal(err)
	}
}

func TestLoad_invalid(t *testing.T) {
	tests := []struct{ name, doc string }{
		{"not JSON", `{`},
		{"OpenAPI 3.0", `{"openapi":"3.0.3","info":{"title":"x","version":"1"},"paths":{}}`},
		{"bad reference", `{"openapi":"3.1.0","info":{"title":"x","version":"1"},"paths":{"/a":{"get":{"responses":{"200":{"$ref":"#/components/responses/Nope"}}}}}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Load(context.Background(), []byte(tt.doc)); err == nil {
				t.Errorf("Load accepted %s", tt.doc)
			}
		})
	}
}

// TestTransport answers requests from a fake control API, some as the
// document says and some not, and requires a report for exactly the wrong
// ones: the checker must be able to fail.
func TestTransport(t *testing.T) {
	doc, err := Load(context.Background(), api.OpenAPI)
	if err != nil {
		t.Fatal(err)
	}
	const backend = `{"backend_id":"bk_1","state":"ready","fencing_token":1,"runtime":"process","spawn":{"command":["x"]},"created_at":"2026-12-06T00:00:00Z"}`
	const connected = `{"backend_id":"bk_1","spawned":%s,"state":"ready","url":"http://127.0.0.1:7080/t/","token":"t","status_url":"http://127.0.0.1:7070/v1/backends/bk_1/events","fencing_token":1}`
	jsonAnswer := func(status int, body string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			io.WriteString(w, body)
		}
	}
	tests := []struct {
		name, method, path string
		body               string // the request's
		answer             http.HandlerFunc
		wrong              string // what the report must say; "" for a right answer
	}{
		{"connect", "POST", "/v1/connect", `{"key":"doc-1","spawn":{"command":["x"],"resources":{},"state":{}},"wait":true}`,
			jsonAnswer(201, strings.Replace(connected, "%s", "true", 1)), ""},
		{"a request the document refuses, taken", "POST", "/v1/connect", `{"key":"doc-1","spawn":{"command":["x"]},"color":"red"}`,
			jsonAnswer(201, strings.Replace(connected, "%s", "true", 1)), "request the document refuses"},
		{"a request the document refuses, refused", "POST", "/v1/connect", `{"key":"doc-1","color":"red"}`,
			jsonAnswer(400, `{"error":{"code":"bad_request","message":"color: unknown field","field":"color"}}`), ""},
		{"a query the document refuses, taken", "GET", "/v1/backends?state=running", "", jsonAnswer(200, `{"backends":[]}`), "request the document refuses"},
		{"backend", "GET", "/v1/backends/bk_1", "", jsonAnswer(200, backend), ""},
		{"backend missing a required field", "GET", "/v1/backends/bk_1", "", jsonAnswer(200, `{"backend_id":"bk_1","state":"ready"}`), "doesn't match schema"},
		{"backend with a field not described", "GET", "/v1/backends/bk_1", "", jsonAnswer(200, strings.Replace(backend, `"state"`, `"secret":"s","state"`, 1)), "doesn't match schema"},
		{"state not in the enum", "GET", "/v1/backends/bk_1", "", jsonAnswer(200, strings.Replace(backend, `"ready"`, `"running"`, 1)), "doesn't match schema"},
		{"status not described", "GET", "/v1/backends/bk_1", "", jsonAnswer(418, `{"error":{"code":"internal","message":"m"}}`), "status is not supported"},
		{"error body", "GET", "/v1/backends/bk_9", "", jsonAnswer(404, `{"error":{"code":"not_found","message":"backend bk_9 not found"}}`), ""},
		{"error code of another status", "GET", "/v1/backends/bk_9", "", jsonAnswer(404, `{"error":{"code":"conflict","message":"m"}}`), "doesn't match schema"},
		{"error not in the error body", "GET", "/v1/backends/bk_9", "", jsonAnswer(404, `{"message":"not found"}`), "doesn't match schema"},
		{"spawned 201", "POST", "/v1/connect", `{"spawn":{"command":["x"]}}`, jsonAnswer(201, strings.Replace(connected, "%s", "true", 1)), ""},
		{"201 that did not spawn", "POST", "/v1/connect", `{"spawn":{"command":["x"]}}`, jsonAnswer(201, strings.Replace(connected, "%s", "false", 1)), "doesn't match schema"},
		{"backend_failed without its reason", "POST", "/v1/connect", "", jsonAnswer(502, `{"error":{"code":"backend_failed","message":"m","backend_id":"bk_1"}}`), "doesn't match schema"},
		{"wrong content type", "GET", "/healthz", "", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			io.WriteString(w, `{"status":"ok","backends":0}`)
		}, "Content-Type"},
		{"405 with Allow", "GET", "/v1/connect", "", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", "POST")
			jsonAnswer(405, `{"error":{"code":"method_not_allowed","message":"m"}}`)(w, r)
		}, ""},
		{"405 without Allow", "GET", "/v1/connect", "", jsonAnswer(405, `{"error":{"code":"method_not_allowed","message":"m"}}`), "Allow"},
		{"405 whose Allow is not the document's", "DELETE", "/v1/backends/bk_1", "", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", "GET, POST")
			jsonAnswer(405, `{"error":{"code":"method_not_allowed","message":"m"}}`)(w, r)
		}, "document's methods"},
		{"404 for a method the path has not", "GET", "/v1/connect", "", jsonAnswer(404, `{"error":{"code":"not_found","message":"m"}}`), "must be 405"},
		{"unknown path", "GET", "/v1/nothing", "", jsonAnswer(404, `{"error":{"code":"not_found","message":"m"}}`), ""},
		{"unknown path answered 200", "GET", "/v1/nothing", "", jsonAnswer(200, `{}`), "must be 404"},
		{"event stream", "GET", "/v1/backends/bk_1/events", "", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/event-stream")
			w.Header().Set("Cache-Control", "no-cache")
			io.WriteString(w, "id: 1\nevent: state\ndata: {\"state\":\"scheduled\",\"at\":\"2026-12-06T00:00:00Z\"}\n\n: keepalive\n\n")
		}, ""},
		{"event whose data is not a state event", "GET", "/v1/backends/bk_1/events", "", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/event-stream")
			w.Header().Set("Cache-Control", "no-cache")
			io.WriteString(w, "id: 1\nevent: state\ndata: {\"state\":\"gone\",\"at\":\"2026-12-06T00:00:00Z\"}\n\n")
		}, "does not match its schema"},
		{"event of a type not described", "GET", "/v1/backends/bk_1/events", "", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/event-stream")
			w.Header().Set("Cache-Control", "no-cache")
			io.WriteString(w, "event: bogus\ndata: {}\n\n")
		}, "not in the document"},
		{"event stream without Cache-Control", "GET", "/v1/backends/bk_1/events", "", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/event-stream")
		}, "Cache-Control"},
		{"logs", "GET", "/v1/backends/bk_1/logs", "", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			io.WriteString(w, "hello\n")
		}, ""},
		{"logs as HTML", "GET", "/v1/backends/bk_1/logs", "", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			io.WriteString(w, "<p>hello</p>")
		}, "Content-Type"},
		{"not the API's", "GET", "/ui/", "", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			io.WriteString(w, "<p>dashboard</p>")
		}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(tt.answer)
			defer srv.Close()
			var mu sync.Mutex
			var problems []error
			hc := &http.Client{Transport: &Transport{Doc: doc, For: func(*http.Request) func(error) {
				return func(err error) {
					mu.Lock()
					problems = append(problems, err)
					mu.Unlock()
				}
			}}}
			var reqBody io.Reader
			if tt.body != "" {
				reqBody = strings.NewReader(tt.body)
			}
			req, _ := http.NewRequest(tt.method, srv.URL+tt.path, reqBody)
			if tt.body != "" {
				req.Header.Set("Content-Type", "application/json")
			}
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if len(body) == 0 && resp.ContentLength != 0 && resp.ContentLength != -1 {
				t.Errorf("the body did not reach the caller")
			}
			mu.Lock()
			defer mu.Unlock()
			err = errors.Join(problems...)
			t.Logf("report: %v", err)
			switch {
			case tt.wrong == "" && err != nil:
				t.Errorf("a right answer was reported: %v", err)
			case tt.wrong != "" && err == nil:
				t.Errorf("a wrong answer was not reported (want %q)", tt.wrong)
			case tt.wrong != "" && !strings.Contains(err.Error(), tt.wrong):
				t.Errorf("report %q does not say %q", err, tt.wrong)
			}
		})
	}
}

// TestTransport_bodyKept: the caller reads the body the checker read.
func TestTransport_bodyKept(t *testing.T) {
	doc, err := Load(context.Background(), api.OpenAPI)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"status":"ok","backends":3}`+"\n")
	}))
	defer srv.Close()
	var reported error
	hc := &http.Client{Transport: &Transport{Doc: doc, For: func(*http.Request) func(error) { return func(err error) { reported = err } }}}
	resp, err := hc.Get(srv.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got, _ := io.ReadAll(resp.Body)
	if want := `{"status":"ok","backends":3}` + "\n"; string(got) != want || reported != nil {
		t.Errorf("body %q, report %v; want %q and no report", got, reported, want)
	}
}
