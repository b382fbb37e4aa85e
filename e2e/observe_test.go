package e2e

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
)

// TestLogs: a backend's output is kept, followable, and a follow ends when
// the backend terminates.
func TestLogs(t *testing.T) {
	t.Parallel()
	s := start(t, opts{})

	t.Run("snapshot", func(t *testing.T) {
		t.Parallel()
		c := s.spawnReady(t, "logs", tb(map[string]string{"TB_LOG_LINES": "5"}))
		want := tbLogLines(5)
		// Output is captured asynchronously; poll until it is all there.
		var body string
		deadline := time.Now().Add(5 * time.Second)
		for {
			resp, b := s.do(t, http.MethodGet, "/v1/backends/"+c.BackendID+"/logs", "")
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("logs: %d %s", resp.StatusCode, b)
			}
			body = string(b)
			if containsAll(body, want) || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if !containsAll(body, want) {
			t.Fatalf("logs lack the backend's output %q:\n%s", want, body)
		}
		// Kept after the backend is gone.
		s.terminate(t, c.BackendID, false)
		s.waitTerminated(t, c.BackendID, 10*time.Second)
		_, b := s.do(t, http.MethodGet, "/v1/backends/"+c.BackendID+"/logs", "")
		if !containsAll(string(b), want) {
			t.Errorf("logs after termination lack %q:\n%s", want, b)
		}
		// follow=true on a terminated backend returns at once.
		_, b = s.do(t, http.MethodGet, "/v1/backends/"+c.BackendID+"/logs?follow=true", "")
		if !containsAll(string(b), want) {
			t.Errorf("followed logs of a terminated backend lack %q:\n%s", want, b)
		}
	})

	t.Run("follow", func(t *testing.T) {
		t.Parallel()
		c := s.spawnReady(t, "logs-follow", tb(map[string]string{"TB_LOG_LINES": "3"}))
		ctx := testCtx(t, 30*time.Second)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.API+"/v1/backends/"+c.BackendID+"/logs?follow=true", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("follow: status %d", resp.StatusCode)
		}
		lines := make(chan string, 1000)
		ended := make(chan error, 1)
		go func() {
			sc := bufio.NewScanner(resp.Body)
			for sc.Scan() {
				lines <- sc.Text()
			}
			ended <- sc.Err()
		}()
		await := func(what string) {
			t.Helper()
			for {
				select {
				case l := <-lines:
					if strings.Contains(l, what) {
						return
					}
				case err := <-ended:
					t.Fatalf("follow ended (%v) before %q arrived", err, what)
				case <-ctx.Done():
					t.Fatalf("%q did not arrive on the followed log", what)
				}
			}
		}
		for _, l := range tbLogLines(3) {
			await(l)
		}
		// New output arrives while following.
		const marker = "e2e-follow-marker-7f3a"
		tbSay(t, c.URL, marker)
		await(marker)
		// And the follow ends by itself once the backend is gone.
		s.terminate(t, c.BackendID, false)
		select {
		case err := <-ended:
			if err != nil {
				t.Errorf("follow ended with %v, want a clean end", err)
			}
		case <-ctx.Done():
			t.Fatal("follow did not end after the backend terminated")
		}
		if b := s.backend(t, c.BackendID); b.State != berth.StateTerminated {
			t.Errorf("follow ended while the backend is %q, want terminated", b.State)
		}
	})
}

// TestEvents: the SSE stream shows history, then live changes, and ends
// after terminated.
func TestEvents(t *testing.T) {
	t.Parallel()
	s := start(t, opts{})
	c := s.spawnReady(t, "events", tb(nil))

	ctx := testCtx(t, 30*time.Second)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.API+"/v1/backends/"+c.BackendID+"/events", nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("events: status %d", resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		t.Errorf("Content-Type %q, want text/event-stream", ct)
	}
	type got struct {
		ev  sseEvent
		err error
	}
	evC := make(chan got, 100)
	go func() {
		err := readSSE(resp.Body, func(e sseEvent) bool { evC <- got{ev: e}; return true })
		if err == nil {
			err = io.EOF
		}
		evC <- got{err: err}
	}()
	next := func() (api.StateEvent, string, bool) {
		t.Helper()
		for {
			select {
			case g := <-evC:
				if g.err != nil {
					return api.StateEvent{}, "", false
				}
				if g.ev.typ != "state" {
					continue // comments are skipped by readSSE; other events are allowed
				}
				var se api.StateEvent
				if err := json.Unmarshal([]byte(g.ev.data), &se); err != nil {
					t.Fatalf("event data %q: %v", g.ev.data, err)
				}
				if _, err := time.Parse(time.RFC3339Nano, se.At); err != nil {
					t.Errorf("event %+v: at is not RFC 3339: %v", se, err)
				}
				return se, g.ev.id, true
			case <-ctx.Done():
				t.Fatal("no event within the deadline")
			}
		}
	}

	var seen []berth.State
	lastID := int64(-1)
	check := func(want berth.State) api.StateEvent {
		t.Helper()
		e, id, ok := next()
		if !ok {
			t.Fatalf("stream ended after %v, want %q next", seen, want)
		}
		seen = append(seen, e.State)
		if e.State != want {
			t.Fatalf("events %v, want %q next", seen, want)
		}
		if n, err := strconv.ParseInt(id, 10, 64); err == nil {
			if n <= lastID {
				t.Errorf("event id %d after %d: ids must grow", n, lastID)
			}
			lastID = n
		} else if id != "" {
			t.Errorf("event id %q is not a number", id)
		}
		return e
	}
	// History.
	check(berth.StateScheduled)
	check(berth.StateStarting)
	check(berth.StateReady)
	// Live: nothing more arrives until something happens.
	select {
	case g := <-evC:
		if g.err != nil {
			t.Fatalf("stream ended while the backend is ready: %v", g.err)
		}
		if g.ev.typ == "state" {
			t.Fatalf("unexpected event %+v while nothing happened", g.ev)
		}
	case <-time.After(200 * time.Millisecond):
	}
	s.terminate(t, c.BackendID, false)
	if e := check(berth.StateTerminating); e.Reason != berth.ReasonRequested {
		t.Errorf("terminating event reason %q, want requested", e.Reason)
	}
	e := check(berth.StateTerminated)
	if e.Reason != berth.ReasonRequested || e.ExitCode == nil || *e.ExitCode != 0 {
		t.Errorf("terminated event: reason %q exit %s, want requested, 0", e.Reason, fmtCode(e.ExitCode))
	}
	if _, _, ok := next(); ok {
		t.Error("stream went on after terminated; it must end")
	}

	t.Run("after the end", func(t *testing.T) {
		evs := s.history(t, c.BackendID)
		want := []berth.State{berth.StateScheduled, berth.StateStarting, berth.StateReady, berth.StateTerminating, berth.StateTerminated}
		if got := states(evs); !slices.Equal(got, want) {
			t.Errorf("history %v, want %v", got, want)
		}
	})

	t.Run("api client", func(t *testing.T) {
		var got []berth.State
		err := s.Client.Events(testCtx(t, 10*time.Second), c.BackendID, func(e api.StateEvent) error {
			got = append(got, e.State)
			return nil
		})
		if err != nil || len(got) != 5 {
			t.Errorf("api.Client.Events: %v, %v; want 5 events and nil", got, err)
		}
	})
}

func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}
