// Package apitest checks a Berth control API's answers against its OpenAPI
// description (api.OpenAPI), so the document cannot drift from the code:
// the e2e suite sends every request to a real Berth through a Transport.
//
// It is for tests only and must never sit in front of Berth's own clients:
// it reads whole JSON bodies into memory and reports where Berth differs
// from the document instead of failing the request.
package apitest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"slices"
	"strings"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
)

// eventDataExt, on a text/event-stream media type, maps each event type to
// the schema its data must match.
const eventDataExt = "x-berth-event-data"

// Doc is a loaded and validated OpenAPI document.
type Doc struct {
	t      *openapi3.T
	router routers.Router
	// unrouted answers what no operation of the document describes: an
	// unknown path (404), a known path with another method (405), and
	// either without the API key (401).
	unrouted *openapi3.Operation
}

// Load parses and validates an OpenAPI 3.1 document: api.OpenAPI, but for
// the tests that show a wrong answer is caught.
func Load(ctx context.Context, raw []byte) (*Doc, error) {
	l := openapi3.NewLoader()
	t, err := l.LoadFromData(raw)
	if err != nil {
		return nil, fmt.Errorf("apitest: load the OpenAPI document: %w", err)
	}
	if !t.IsOpenAPI31OrLater() {
		return nil, fmt.Errorf("apitest: the document is OpenAPI %s, want 3.1", t.OpenAPI)
	}
	if err := t.Validate(ctx); err != nil {
		return nil, fmt.Errorf("apitest: the OpenAPI document is not valid: %w", err)
	}
	router, err := gorillamux.NewRouter(t)
	if err != nil {
		return nil, fmt.Errorf("apitest: route the OpenAPI document: %w", err)
	}
	d := &Doc{t: t, router: router, unrouted: &openapi3.Operation{Responses: openapi3.NewResponses()}}
	for status, name := range map[int]string{401: "Unauthorized", 404: "NotFound", 405: "MethodNotAllowed"} {
		ref := t.Components.Responses[name]
		if ref == nil {
			return nil, fmt.Errorf("apitest: the document lacks components/responses/%s", name)
		}
		d.unrouted.Responses.Set(fmt.Sprint(status), ref)
	}
	return d, nil
}

// Transport checks each answer to a request For accepts against Doc, and
// passes every answer on unchanged (a body it read is put back).
type Transport struct {
	Base http.RoundTripper // nil: http.DefaultTransport
	Doc  *Doc
	// For returns where the mismatches of req's answer go, or nil when req
	// is not for a control API (a backend behind the proxy, S3, …).
	// Mismatches in a streamed body arrive while it is read.
	For func(req *http.Request) func(error)
}

func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	base := t.Base
	if base == nil {
		base = http.DefaultTransport
	}
	resp, err := base.RoundTrip(req)
	if err != nil {
		return resp, err
	}
	t.Check(req, resp)
	return resp, nil
}

// Check checks resp, the answer to req, if For accepts req: for answers
// read some other way than through RoundTrip (off a raw connection).
func (t *Transport) Check(req *http.Request, resp *http.Response) {
	report := t.For(req)
	if report == nil {
		return
	}
	if err := t.Doc.Check(req, resp, report); err != nil {
		report(fmt.Errorf("%s %s → %d: %w", req.Method, req.URL.Path, resp.StatusCode, err))
	}
}

// CloseIdleConnections closes Base's idle connections, as http.Client's
// does for a transport that can.
func (t *Transport) CloseIdleConnections() {
	if c, ok := t.Base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// Check validates resp, the answer to req: status, headers and a JSON body
// at once (resp.Body is replaced by what was read); an event stream's events
// as they are read, each mismatch going to report.
func (d *Doc) Check(req *http.Request, resp *http.Response, report func(error)) error {
	route, params, err := d.router.FindRoute(req)
	switch {
	case errors.Is(err, routers.ErrPathNotFound) && !strings.HasPrefix(req.URL.Path, "/v1/"):
		return nil // not the API's (the dashboard's pages): the document does not say
	case errors.Is(err, routers.ErrPathNotFound):
		if resp.StatusCode != http.StatusNotFound && resp.StatusCode != http.StatusUnauthorized {
			return fmt.Errorf("the document has no path %s, so the answer must be 404 (or 401)", req.URL.Path)
		}
	case errors.Is(err, routers.ErrMethodNotAllowed):
		if resp.StatusCode == http.StatusMethodNotAllowed {
			if err := d.checkAllow(req, resp.Header.Get("Allow")); err != nil {
				return err
			}
		} else if resp.StatusCode != http.StatusUnauthorized {
			return fmt.Errorf("the document has no %s for %s, so the answer must be 405 (or 401)", req.Method, req.URL.Path)
		}
	case err != nil:
		return fmt.Errorf("route: %w", err)
	}
	if err != nil {
		// No operation describes the request: its answer is one of those
		// the document gives for that (401, 404, 405).
		route = &routers.Route{Spec: d.t, Path: req.URL.Path, Method: req.Method, Operation: d.unrouted}
	}

	if resp.StatusCode/100 == 2 {
		if err := checkRequest(req, route, params); err != nil {
			return fmt.Errorf("the server took a request the document refuses: %w", err)
		}
	}
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route},
		Status:                 resp.StatusCode,
		Header:                 resp.Header,
		Options:                &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	}
	mt, described, streamed := d.mediaType(route.Operation, resp)
	if streamed {
		// The body may never end: check the status, the headers and the
		// content type here, and the events while they are read.
		in.Options.ExcludeResponseBody = true
		if described && mt == nil {
			return fmt.Errorf("Content-Type %q is not one the document gives for %d", resp.Header.Get("Content-Type"), resp.StatusCode)
		}
		if err := openapi3filter.ValidateResponse(req.Context(), in); err != nil {
			return err
		}
		if mt != nil && mt.Extensions[eventDataExt] != nil {
			schemas, err := d.eventSchemas(mt)
			if err != nil {
				return err
			}
			resp.Body = newEventChecker(resp.Body, schemas, func(err error) {
				report(fmt.Errorf("%s %s → %d: event stream: %w", req.Method, req.URL.Path, resp.StatusCode, err))
			})
		}
		return nil
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("read the body: %w", err)
	}
	in.SetBodyBytes(body)
	return openapi3filter.ValidateResponse(req.Context(), in)
}

// checkRequest validates a request the server took (it answered 2xx), so
// the document cannot be stricter than the server either. A body is read
// again through GetBody; one that cannot be (a stream) goes unchecked. Berth
// reads every request body as JSON, whatever its Content-Type (curl -d
// sends a form's), as the document says, so it is checked as JSON.
func checkRequest(req *http.Request, route *routers.Route, params map[string]string) error {
	r := req.Clone(req.Context())
	opts := &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc, MultiError: true}
	switch {
	case req.GetBody != nil:
		body, err := req.GetBody()
		if err != nil {
			return err
		}
		r.Body = body
		r.Header.Set("Content-Type", "application/json")
	case req.Body != nil && req.Body != http.NoBody:
		opts.ExcludeRequestBody = true
		r.Body = http.NoBody
	}
	return openapi3filter.ValidateRequest(req.Context(), &openapi3filter.RequestValidationInput{
		Request: r, PathParams: params, Route: route, Options: opts})
}

// mediaType returns what the document says of resp's content type for its
// status, whether it describes any body for that status, and whether the
// body is one to check as it streams (anything but JSON: events, logs,
// saved state, metrics).
func (d *Doc) mediaType(op *openapi3.Operation, resp *http.Response) (mt *openapi3.MediaType, described, streamed bool) {
	ct := resp.Header.Get("Content-Type")
	base, _, _ := mime.ParseMediaType(ct)
	streamed = base != "application/json"
	ref := op.Responses.Status(resp.StatusCode)
	if ref == nil || ref.Value == nil || len(ref.Value.Content) == 0 {
		return nil, false, streamed
	}
	return ref.Value.Content.Get(ct), true, streamed
}

// checkAllow requires a 405's Allow header to list exactly the methods the
// document has for the path (HEAD with GET, as Go's router serves it).
func (d *Doc) checkAllow(req *http.Request, allow string) error {
	var want []string
	for _, method := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
		probe := &http.Request{Method: method, URL: req.URL, Host: req.Host}
		if _, _, err := d.router.FindRoute(probe); err == nil {
			want = append(want, method)
		} else if method == http.MethodHead && slices.Contains(want, http.MethodGet) {
			want = append(want, method)
		}
	}
	var got []string
	for m := range strings.SplitSeq(allow, ",") {
		if m = strings.TrimSpace(m); m != "" {
			got = append(got, m)
		}
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		return fmt.Errorf("405 with Allow %q; the document's methods for %s are %q", allow, req.URL.Path, strings.Join(want, ", "))
	}
	return nil
}

// eventSchemas resolves a media type's x-berth-event-data: event type →
// "#/components/schemas/NAME".
func (d *Doc) eventSchemas(mt *openapi3.MediaType) (map[string]*openapi3.Schema, error) {
	raw, ok := mt.Extensions[eventDataExt].(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%s is not an object of event type → schema reference", eventDataExt)
	}
	out := make(map[string]*openapi3.Schema, len(raw))
	for typ, ref := range raw {
		s, _ := ref.(string)
		name, ok := strings.CutPrefix(s, "#/components/schemas/")
		sr := d.t.Components.Schemas[name]
		if !ok || sr == nil || sr.Value == nil {
			return nil, fmt.Errorf("%s: event %q names %q, not a schema of the document", eventDataExt, typ, s)
		}
		out[typ] = sr.Value
	}
	return out, nil
}

// eventChecker passes an event stream through unchanged and validates each
// event's data, as JSON, against the schema of its type.
type eventChecker struct {
	io.ReadCloser
	pw      *io.PipeWriter
	done    chan struct{}
	schemas map[string]*openapi3.Schema
	report  func(error)
}

func newEventChecker(body io.ReadCloser, schemas map[string]*openapi3.Schema, report func(error)) io.ReadCloser {
	pr, pw := io.Pipe()
	c := &eventChecker{pw: pw, done: make(chan struct{}), schemas: schemas, report: report}
	c.ReadCloser = readCloser{io.TeeReader(body, pw), func() error {
		err := body.Close()
		pw.Close()
		<-c.done
		return err
	}}
	go c.scan(pr)
	return c
}

type readCloser struct {
	io.Reader
	close func() error
}

func (r readCloser) Close() error { return r.close() }

// scan reads the copy of the stream; it drains it to the end so the tee
// never blocks the reader.
func (c *eventChecker) scan(r *io.PipeReader) {
	defer close(c.done)
	defer io.Copy(io.Discard, r)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	typ, data := "message", []string(nil)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if data != nil {
				c.check(typ, strings.Join(data, "\n"))
			}
			typ, data = "message", nil
		case strings.HasPrefix(line, ":"):
		default:
			field, value, _ := strings.Cut(line, ":")
			value = strings.TrimPrefix(value, " ")
			switch field {
			case "event":
				typ = value
			case "data":
				data = append(data, value)
			case "id", "retry":
			default:
				c.report(fmt.Errorf("line %q: %q is not an event stream field", line, field))
			}
		}
	}
}

func (c *eventChecker) check(typ, data string) {
	s := c.schemas[typ]
	if s == nil {
		c.report(fmt.Errorf("event type %q is not in the document's %s", typ, eventDataExt))
		return
	}
	var v any
	if err := json.Unmarshal([]byte(data), &v); err != nil {
		c.report(fmt.Errorf("event %q: data %q is not JSON: %w", typ, data, err))
		return
	}
	if err := s.VisitJSON(v, openapi3.EnableJSONSchema2020(), openapi3.MultiErrors(), openapi3.VisitAsResponse()); err != nil {
		c.report(fmt.Errorf("event %q: data %s does not match its schema: %w", typ, data, err))
	}
}
