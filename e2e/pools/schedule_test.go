package pools

import (
	"net/http"
	"testing"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
)

// A schedule's window that holds now sets min_ready; once none holds, the
// pool's own min_ready applies and the ready backends beyond it stop.
func TestPool_Schedule(t *testing.T) {
	s := startServer(t)
	tmpl := s.template(0)
	ctx := t.Context()
	hhmm := func(d time.Duration) string { return time.Now().UTC().Add(d).Format("15:04") }
	now := []berth.PoolWindow{{From: hhmm(-time.Hour), To: hhmm(time.Hour), MinReady: 2}}
	p, err := s.Client.PutPool(ctx, "sched", api.PoolRequest{Spawn: &tmpl, MinReady: 0, Schedule: now})
	if err != nil {
		t.Fatal(err)
	}
	if p.MinReadyNow != 2 || len(p.Schedule) != 1 {
		t.Errorf("pool = %+v; want min_ready_now 2 from its window", p)
	}
	s.waitReady("sched", 2)

	later := []berth.PoolWindow{{From: hhmm(2 * time.Hour), To: hhmm(3 * time.Hour), MinReady: 2}}
	if p, err = s.Client.PutPool(ctx, "sched", api.PoolRequest{Spawn: &tmpl, MinReady: 0, Schedule: later}); err != nil {
		t.Fatal(err)
	}
	if p.MinReadyNow != 0 {
		t.Errorf("min_ready_now = %d outside the window; want 0", p.MinReadyNow)
	}
	s.waitReady("sched", 0)

	_, err = s.Client.PutPool(ctx, "sched", api.PoolRequest{Spawn: &tmpl, Schedule: []berth.PoolWindow{{From: "25:00", To: "10:00"}}})
	if ae, ok := err.(*api.Error); !ok || ae.Status != http.StatusBadRequest || ae.Field != "schedule[0].from" {
		t.Errorf("bad window: %v; want a 400 naming schedule[0].from", err)
	}
}
