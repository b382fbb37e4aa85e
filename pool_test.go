package berth

import (
	"testing"
	"time"
)

func TestPool_MinReadyAt(t *testing.T) {
	p := &Pool{MinReady: 1, Schedule: []PoolWindow{
		{Days: []string{"mon", "tue", "wed", "thu", "fri"}, From: "08:00", To: "18:00", MinReady: 10},
		{From: "22:00", To: "02:00", MinReady: 3},
		{Days: []string{"sat"}, From: "01:00", To: "05:00", MinReady: 7},
	}}
	at := func(s string) time.Time {
		tm, err := time.Parse("2006-01-02 15:04 MST", s)
		if err != nil {
			t.Fatal(err)
		}
		return tm
	}
	for _, tt := range []struct {
		at   string
		want int
	}{
		{"2026-12-07 07:59 UTC", 1},  // a Monday, before the window
		{"2026-12-07 08:00 UTC", 10}, // from is inclusive
		{"2026-12-07 17:59 UTC", 10},
		{"2026-12-07 18:00 UTC", 1}, // to is exclusive
		{"2026-12-12 12:00 UTC", 1}, // a Saturday: no weekday window
		{"2026-12-07 23:30 UTC", 3}, // across midnight, before it
		{"2026-12-08 01:59 UTC", 3}, // and after it
		{"2026-12-08 02:00 UTC", 1},
		{"2026-12-12 01:30 UTC", 3}, // the midnight window comes first
		{"2026-12-12 03:00 UTC", 7}, // Saturday only
		{"2026-12-13 03:00 UTC", 1}, // not Sunday
	} {
		if got := p.MinReadyAt(at(tt.at)); got != tt.want {
			t.Errorf("MinReadyAt(%s) = %d; want %d", tt.at, got, tt.want)
		}
	}
}

func TestPool_Validate(t *testing.T) {
	ok := SpawnConfig{Command: []string{"x"}}
	for _, tt := range []struct {
		name  string
		p     Pool
		field string
	}{
		{"ok", Pool{Name: "web", Spawn: ok, MinReady: 2, Max: 5, Schedule: []PoolWindow{{From: "08:00", To: "18:00", MinReady: 5}}}, ""},
		{"name", Pool{Name: "Web", Spawn: ok}, "name"},
		{"spawn", Pool{Name: "web"}, "spawn.command"},
		{"dir", Pool{Name: "web", Spawn: SpawnConfig{Command: []string{"x"}, State: StateConfig{Mode: StateModeDir}}}, "spawn.state.mode"},
		{"min_ready", Pool{Name: "web", Spawn: ok, MinReady: -1}, "min_ready"},
		{"max", Pool{Name: "web", Spawn: ok, MinReady: 3, Max: 2}, "max"},
		{"from", Pool{Name: "web", Spawn: ok, Schedule: []PoolWindow{{From: "8:00", To: "18:00"}}}, "schedule[0].from"},
		{"to", Pool{Name: "web", Spawn: ok, Schedule: []PoolWindow{{From: "08:00", To: "24:00"}}}, "schedule[0].to"},
		{"empty window", Pool{Name: "web", Spawn: ok, Schedule: []PoolWindow{{From: "08:00", To: "08:00"}}}, "schedule[0].to"},
		{"days", Pool{Name: "web", Spawn: ok, Schedule: []PoolWindow{{From: "08:00", To: "09:00", Days: []string{"monday"}}}}, "schedule[0].days"},
		{"window over max", Pool{Name: "web", Spawn: ok, Max: 4, Schedule: []PoolWindow{{From: "08:00", To: "09:00", MinReady: 5}}}, "schedule[0].min_ready"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.p.Validate()
			fe, _ := err.(*FieldError)
			switch {
			case tt.field == "" && err != nil:
				t.Errorf("Validate = %v; want nil", err)
			case tt.field != "" && (fe == nil || fe.Field != tt.field):
				t.Errorf("Validate = %v; want a FieldError on %s", err, tt.field)
			}
		})
	}
}
