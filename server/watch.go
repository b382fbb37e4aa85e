package server

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

// allEvents streams, as Server-Sent Events, every backend's record after
// each change of any backend (GET /v1/events), so a list stays current
// without polling. Changes that come close together may merge: a reader
// sees each changed backend at its latest state, not every step between.
// The stream has no history; a reader lists the backends once the stream
// is open, and again when it reopens.
func (a *apiServer) allEvents(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	// Watch before the headers go out: a reader that lists once the stream
	// is open misses nothing in between.
	changed, take, cancel := a.m.Watch()
	defer cancel()
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	if err := rc.Flush(); err != nil {
		return nil
	}
	keepalive := time.NewTicker(15 * time.Second)
	defer keepalive.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-a.m.ctx.Done(): // shut down: end the stream so the server can stop
			return nil
		case <-keepalive.C:
			fmt.Fprint(w, ": keepalive\n\n")
		case <-changed:
			for _, id := range take() {
				b, err := a.m.Backend(ctx, id)
				if err != nil {
					a.log.Warn("events: read backend", "backend", id, "err", err)
					return nil // the reader reopens the stream and lists again
				}
				data, _ := json.Marshal(b)
				fmt.Fprintf(w, "event: backend\ndata: %s\n\n", data)
			}
		}
		if err := rc.Flush(); err != nil {
			return nil
		}
	}
}
