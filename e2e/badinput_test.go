package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestBadInput: every malformed request gets a 400 (or 404) with the JSON
// error body naming the field at fault, and nothing is spawned for it.
func TestBadInput(t *testing.T) {
	t.Parallel()
	s := start(t, opts{})
	cmd := fmt.Sprintf("[%q]", bin.testbackend)
	spawn := func(extra string) string {
		if extra != "" {
			extra = "," + extra
		}
		return fmt.Sprintf(`{"key":"k","spawn":{"command":%s%s}}`, cmd, extra)
	}

	t.Run("connect", func(t *testing.T) {
		tests := []struct {
			name, body string
			status     int
			field      string // the field the error must name
		}{
			{"malformed JSON", `{"key":`, 400, "body"},
			{"not an object", `[1,2]`, 400, "body"},
			{"empty body", ``, 400, "body"},
			{"trailing data", spawn("") + ` {}`, 400, "body"},
			{"unknown field", `{"key":"k","bogus":1,"spawn":{"command":` + cmd + `}}`, 400, "bogus"},
			{"unknown spawn field", `{"key":"k","spawn":{"command":` + cmd + `,"comand":["x"]}}`, 400, "spawn.comand"},
			{"wrong type", `{"key":5}`, 400, "key"},
			{"body over 1 MiB", `{"key":"k","user":"` + strings.Repeat("a", 1<<20) + `"}`, 413, "body"},
			{"key with a space", `{"key":"doc 42","spawn":{"command":` + cmd + `}}`, 400, "key"},
			{"key with a bad char", `{"key":"doc#42","spawn":{"command":` + cmd + `}}`, 400, "key"},
			{"key of 129 chars", `{"key":"` + strings.Repeat("k", 129) + `","spawn":{"command":` + cmd + `}}`, 400, "key"},
			{"empty command", `{"key":"k","spawn":{"command":[]}}`, 400, "spawn.command"},
			{"empty program", `{"key":"k","spawn":{"command":[""]}}`, 400, "spawn.command"},
			{"no spawn and no key", `{}`, 400, "spawn"},
			{"negative max_idle_seconds", spawn(`"max_idle_seconds":-1`), 400, "spawn.max_idle_seconds"},
			{"absurd max_idle_seconds", spawn(`"max_idle_seconds":100000000`), 400, "spawn.max_idle_seconds"},
			{"negative lifetime_seconds", spawn(`"lifetime_seconds":-5`), 400, "spawn.lifetime_seconds"},
			{"negative grace_seconds", spawn(`"grace_seconds":-1`), 400, "spawn.grace_seconds"},
			{"negative startup_timeout_seconds", spawn(`"startup_timeout_seconds":-1`), 400, "spawn.startup_timeout_seconds"},
			{"negative wait_timeout_seconds", `{"key":"k","wait":true,"wait_timeout_seconds":-1,"spawn":{"command":` + cmd + `}}`, 400, "wait_timeout_seconds"},
			{"unknown stop signal", spawn(`"stop_signal":"SIGBOGUS"`), 400, "spawn.stop_signal"},
			{"reserved env var", spawn(`"env":{"PORT":"1"}`), 400, "spawn.env.PORT"},
			{"null env value", spawn(`"env":{"A":null}`), 400, "spawn.env.A"},
			{"duplicate key", `{"key":"a","key":"b","spawn":{"command":` + cmd + `}}`, 400, "key"},
			{"duplicate env var", spawn(`"env":{"A":"1","A":"2"}`), 400, "spawn.env.A"},
			{"duplicate spawn field", spawn(`"max_idle_seconds":5,"max_idle_seconds":6`), 400, "spawn.max_idle_seconds"},
			{"unknown runtime", spawn(`"runtime":"podman"`), 400, "spawn.runtime"},
			{"runtime this server does not run", spawn(`"runtime":"docker"`), 400, "spawn.runtime"},
			{"runtime that cannot run the spawn", `{"key":"k","spawn":{"image":"app:1","runtime":"process"}}`, 400, "spawn.runtime"},
			{"image and no container runtime", `{"key":"k","spawn":{"image":"app:1"}}`, 400, "spawn.image"},
			// Valid keys up to the limit pass validation: not held and no
			// spawn config is 404, proving the key itself was accepted.
			{"key of 128 chars, not held", `{"key":"` + strings.Repeat("k", 128) + `"}`, 404, ""},
			{"key with every allowed char, not held", `{"key":"aZ09._:/@-"}`, 404, ""},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				resp, body := s.do(t, http.MethodPost, "/v1/connect", tt.body)
				if resp.StatusCode != tt.status {
					t.Fatalf("status %d, want %d; body %s", resp.StatusCode, tt.status, body)
				}
				if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
					t.Errorf("Content-Type %q, want application/json", ct)
				}
				e := apiError(t, body)
				if e.Field != tt.field {
					t.Errorf("error field %q, want %q (error %+v)", e.Field, tt.field, e)
				}
			})
		}
		// Messages say what to send, in the caller's terms.
		for _, tt := range []struct{ name, body, field, says string }{
			{"non-ASCII key", `{"key":"doc-é","spawn":{"command":` + cmd + `}}`, "key", `'é' at 4`},
			{"max_idle_seconds no int holds", spawn(`"max_idle_seconds":1e30`), "spawn.max_idle_seconds", "between 0 and 604800"},
			{"fractional grace_seconds", spawn(`"grace_seconds":2.5`), "spawn.grace_seconds", "between 0 and 3600"},
			{"memory_mb no int holds", spawn(`"resources":{"memory_mb":1e20}`), "spawn.resources.memory_mb", "between 0 and 1048576"},
			{"duplicate key", `{"key":"a","key":"b"}`, "key", "more than once"},
			{"null env value", spawn(`"env":{"A":null}`), "spawn.env.A", "not null"},
			{"runtime this server does not run", spawn(`"runtime":"kubernetes"`), "spawn.runtime", "this server runs process"},
			{"runtime that cannot run the spawn", `{"key":"k","spawn":{"image":"app:1","runtime":"process"}}`, "spawn.runtime", "runs commands, not images"},
		} {
			t.Run("message/"+tt.name, func(t *testing.T) {
				resp, body := s.do(t, http.MethodPost, "/v1/connect", tt.body)
				if resp.StatusCode != http.StatusBadRequest {
					t.Fatalf("status %d, want 400; body %s", resp.StatusCode, body)
				}
				e := apiError(t, body)
				if e.Code != "bad_request" || e.Field != tt.field || !strings.Contains(e.Message, tt.says) {
					t.Errorf("error %+v; want bad_request on %s saying %q", e, tt.field, tt.says)
				}
				if strings.Contains(e.Message, "unmarshal") || strings.Contains(e.Message, "not number") {
					t.Errorf("message %q speaks Go", e.Message)
				}
			})
		}
		// None of that may have started anything.
		if list, err := s.Client.Backends(testCtx(t, 5*time.Second), "", ""); err != nil || len(list) != 0 {
			t.Errorf("after only bad requests: backends %v, err %v; want none", list, err)
		}
	})

	// A body over the limit is refused as soon as that is known, without
	// reading the rest: by its Content-Length, or at the limit's next byte.
	t.Run("body far over the limit, sent slowly", func(t *testing.T) {
		const limit = 1 << 20
		for _, chunked := range []bool{false, true} {
			res, body, finished := slowUpload(t, s.API+"/v1/connect", "", chunked, limit-64<<10, limit+256<<10)
			if res.StatusCode != http.StatusRequestEntityTooLarge {
				t.Fatalf("chunked %v: status %d %s, want 413", chunked, res.StatusCode, body)
			}
			if e := apiError(t, body); e.Code != "too_large" || e.Field != "body" {
				t.Errorf("chunked %v: error %+v, want too_large on body", chunked, e)
			}
			if finished {
				t.Errorf("chunked %v: answered only after the client sent all of its body", chunked)
			}
		}
	})

	t.Run("restore body over the limit", func(t *testing.T) {
		resp, body := s.do(t, http.MethodPost, "/v1/state/restore", `{"key":"k","version":"`+strings.Repeat("v", 1<<16)+`"}`)
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Fatalf("status %d %s, want 413", resp.StatusCode, body)
		}
		if e := apiError(t, body); e.Code != "too_large" || e.Field != "body" {
			t.Errorf("error %+v, want too_large on body", e)
		}
	})

	t.Run("restore body decoded as strictly as a connect", func(t *testing.T) {
		for _, r := range []struct{ body, field string }{
			{`{"key":"k","key":"other","version":"v"}`, "key"},
			{`{"key":"k","version":"v","bogus":1}`, "bogus"},
			{`{"key":"k","version":5}`, "version"},
			{`{"key":`, "body"},
		} {
			resp, body := s.do(t, http.MethodPost, "/v1/state/restore", r.body)
			if resp.StatusCode != http.StatusBadRequest {
				t.Errorf("%s: status %d %s, want 400", r.body, resp.StatusCode, body)
				continue
			}
			if e := apiError(t, body); e.Code != "bad_request" || e.Field != r.field {
				t.Errorf("%s: error %+v, want bad_request on %s", r.body, e, r.field)
			}
		}
	})

	t.Run("unknown backend", func(t *testing.T) {
		for _, r := range []struct{ method, path, body string }{
			{"GET", "/v1/backends/bk_doesnotexist", ""},
			{"POST", "/v1/backends/bk_doesnotexist/terminate", `{"hard":false}`},
			{"GET", "/v1/backends/bk_doesnotexist/events", ""},
			{"GET", "/v1/backends/bk_doesnotexist/logs", ""},
		} {
			resp, body := s.do(t, r.method, r.path, r.body)
			if resp.StatusCode != http.StatusNotFound {
				t.Errorf("%s %s: %d %s, want 404", r.method, r.path, resp.StatusCode, body)
				continue
			}
			if e := apiError(t, body); e.Code != "not_found" {
				t.Errorf("%s %s: code %q, want not_found", r.method, r.path, e.Code)
			}
		}
	})

	t.Run("bad list filter", func(t *testing.T) {
		resp, body := s.do(t, http.MethodGet, "/v1/backends?state=sleeping", "")
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("status %d %s, want 400", resp.StatusCode, body)
		}
		if e := apiError(t, body); e.Field != "state" {
			t.Errorf("field %q, want state", e.Field)
		}
	})

	t.Run("bad terminate body", func(t *testing.T) {
		resp, body := s.do(t, http.MethodPost, "/v1/backends/bk_doesnotexist/terminate", `{"hard":`)
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("status %d %s, want 400", resp.StatusCode, body)
		}
		apiError(t, body)
	})
}

// TestServeAPIKey: berth serve refuses control API calls without the right
// key; the proxy needs no key (its tokens are the credential).
func TestServeAPIKey(t *testing.T) {
	t.Parallel()
	const key = "e2e-secret-api-key"
	s := start(t, opts{serve: true, apiKey: key})

	for _, tt := range []struct {
		name, auth string
		want       int
	}{
		{"no key", "", 401},
		{"wrong key", "Bearer nope", 401},
		{"key without Bearer", key, 401},
		{"right key", "Bearer " + key, 200},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for _, path := range []string{"/v1/backends", "/v1/backends/bk_x/events", "/metrics"} {
				req, _ := http.NewRequestWithContext(testCtx(t, 10*time.Second), http.MethodGet, s.API+path, nil)
				if tt.auth != "" {
					req.Header.Set("Authorization", tt.auth)
				}
				resp, body := send(t, req)
				want := tt.want
				if path == "/v1/backends/bk_x/events" && want == 200 {
					want = 404 // authorised, and there is no such backend
				}
				if resp.StatusCode != want {
					t.Errorf("GET %s: %d %s, want %d", path, resp.StatusCode, body, want)
					continue
				}
				if want == 401 {
					if e := apiError(t, body); e.Code != "unauthorized" {
						t.Errorf("GET %s: code %q, want unauthorized", path, e.Code)
					}
				}
			}
			req, _ := http.NewRequestWithContext(testCtx(t, 10*time.Second), http.MethodPost, s.API+"/v1/connect",
				strings.NewReader(fmt.Sprintf(`{"key":"k","spawn":{"command":[%q]}}`, bin.testbackend)))
			if tt.auth != "" {
				req.Header.Set("Authorization", tt.auth)
			}
			resp, body := send(t, req)
			if tt.want == 401 && resp.StatusCode != 401 {
				t.Errorf("POST /v1/connect: %d %s, want 401", resp.StatusCode, body)
			}
			if tt.want == 200 && resp.StatusCode/100 != 2 {
				t.Errorf("POST /v1/connect: %d %s, want 2xx", resp.StatusCode, body)
			}
		})
	}

	t.Run("proxy needs no API key", func(t *testing.T) {
		c := s.spawnReady(t, "proxied", tb(nil))
		resp, body := get(t, c.URL, nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d %s, want 200", c.URL, resp.StatusCode, body)
		}
	})
}

// slowUpload sends method rawURL with a body of total bytes, as a slow
// client would: the head and the first fast bytes at once, then a KiB
// every 10 ms, until the server answers or all is sent. The length goes
// in Content-Length or, with chunked, is known only at the end. It
// returns the server's answer, and whether the client had sent the whole
// body by the time the answer came.
func slowUpload(t *testing.T, rawURL, auth string, chunked bool, fast, total int) (res *http.Response, body []byte, finished bool) {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	head := "PUT " + u.RequestURI() + " HTTP/1.1\r\nHost: " + u.Host + "\r\nContent-Type: application/json\r\n"
	if strings.HasSuffix(u.Path, "/v1/connect") {
		head = "POST" + strings.TrimPrefix(head, "PUT")
	}
	if auth != "" {
		head += "Authorization: Bearer " + auth + "\r\n"
	}
	if chunked {
		head += "Transfer-Encoding: chunked\r\n\r\n"
	} else {
		head += "Content-Length: " + strconv.Itoa(total) + "\r\n\r\n"
	}
	var done atomic.Bool
	stop := make(chan struct{})
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		send := func(n int) bool {
			b := bytes.Repeat([]byte(" "), n)
			if chunked {
				b = append(append([]byte(strconv.FormatInt(int64(n), 16)+"\r\n"), b...), "\r\n"...)
			}
			_, err := c.Write(b)
			return err == nil
		}
		if _, err := io.WriteString(c, head); err != nil || !send(fast) {
			return
		}
		for sent := fast; sent < total; sent += 1 << 10 {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			if !send(min(1<<10, total-sent)) {
				return
			}
		}
		if chunked {
			io.WriteString(c, "0\r\n\r\n")
		}
		done.Store(true)
	}()
	defer func() { close(stop); <-wrote }()
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(c)
	method := head[:strings.IndexByte(head, ' ')]
	req, err := http.NewRequest(method, rawURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err = http.ReadResponse(br, req)
	if err != nil {
		t.Fatalf("%s %s: no answer: %v", method, rawURL, err)
	}
	checked(nil).Check(req, res) // a control API's answer, like every other
	finished = done.Load()
	body, err = io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("read the answer's body: %v", err)
	}
	return res, body, finished
}
