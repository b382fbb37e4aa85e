package berth

import (
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"time"
)

// Pool is a named warm pool: Berth keeps MinReady backends of Spawn
// started and ready without a key, and a connect for a new key claims one
// of them instead of spawning (server/pool.go, DESIGN.md "Warm pools").
type Pool struct {
	Name  string      `json:"name"`
	Spawn SpawnConfig `json:"spawn"`
	// MinReady is how many unclaimed backends the pool keeps ready.
	MinReady int `json:"min_ready"`
	// Max caps the live backends the pool has started, claimed or not; 0
	// means no cap. Connects beyond it are cold spawns.
	Max int `json:"max,omitempty"`
	// Schedule changes MinReady during daily windows (MinReadyAt).
	Schedule  []PoolWindow `json:"schedule,omitempty"`
	CreatedAt time.Time    `json:"created_at"`
	UpdatedAt time.Time    `json:"updated_at"`
}

// MaxPoolReady bounds min_ready: a pool is a buffer, not a fleet.
const MaxPoolReady = 1000

var poolName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// ValidatePoolName checks a pool's name: 1 to 63 of [a-z0-9._-], starting
// with a letter or digit (it appears in URLs and metric labels).
func ValidatePoolName(name string) error {
	if !poolName.MatchString(name) {
		return fmt.Errorf("must be 1 to 63 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit (got %q)", name)
	}
	return nil
}

// Validate checks a pool definition; errors are *FieldError named as in
// the JSON body of PUT /v1/pools/{name}.
func (p *Pool) Validate() error {
	if err := ValidatePoolName(p.Name); err != nil {
		return &FieldError{Field: "name", Message: err.Error()}
	}
	if err := p.Spawn.Validate("spawn"); err != nil {
		return err
	}
	// A pooled backend starts before its key is known, so its state can
	// only reach it through the backend API after the claim: dir and
	// volume are prepared on disk before the start, for one key.
	switch m := p.Spawn.StateMode(); m {
	case StateModeNone, StateModeBlob:
	default:
		return &FieldError{Field: "spawn.state.mode", Message: fmt.Sprintf("a pool's backends start before they have a key, so their state mode must be none or blob (loaded at claim time), not %s", m)}
	}
	if p.MinReady < 0 || p.MinReady > MaxPoolReady {
		return &FieldError{Field: "min_ready", Message: fmt.Sprintf("must be between 0 and %d", MaxPoolReady)}
	}
	if p.Max < 0 || (p.Max > 0 && p.Max < p.MinReady) {
		return &FieldError{Field: "max", Message: "must be 0 (no cap) or at least min_ready"}
	}
	return p.validateSchedule()
}

// SameSpawn reports whether two spawn configs ask for the same backend,
// as a connect whose spawn equals a pool's template does: compared as
// their JSON, so nil and empty maps, and field order, do not matter.
func SameSpawn(a, b *SpawnConfig) bool {
	ja, err1 := json.Marshal(a)
	jb, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && string(ja) == string(jb)
}

// PoolWindow sets a pool's min_ready during a daily window of UTC time:
// from From (inclusive) to To (exclusive), "HH:MM"; a To before From
// crosses midnight. Days, when set, names the days a window starts on
// ("mon" … "sun").
type PoolWindow struct {
	Days     []string `json:"days,omitempty"`
	From     string   `json:"from"`
	To       string   `json:"to"`
	MinReady int      `json:"min_ready"`
}

var weekdays = map[string]time.Weekday{
	"sun": time.Sunday, "mon": time.Monday, "tue": time.Tuesday, "wed": time.Wednesday,
	"thu": time.Thursday, "fri": time.Friday, "sat": time.Saturday,
}

// clock parses "HH:MM" into minutes after midnight.
func clock(s string) (int, bool) {
	t, err := time.Parse("15:04", s)
	if err != nil || len(s) != 5 {
		return 0, false
	}
	return t.Hour()*60 + t.Minute(), true
}

// MinReadyAt is how many unclaimed backends the pool keeps ready at t:
// the min_ready of the first window of its schedule that holds t, else
// its own.
func (p *Pool) MinReadyAt(t time.Time) int {
	t = t.UTC()
	now := t.Hour()*60 + t.Minute()
	for _, w := range p.Schedule {
		from, ok1 := clock(w.From)
		to, ok2 := clock(w.To)
		if !ok1 || !ok2 {
			continue
		}
		day, in := t.Weekday(), false
		switch {
		case from < to:
			in = from <= now && now < to
		case now >= from:
			in = true
		case now < to:
			in, day = true, (day+6)%7 // it started the day before
		}
		if in && (len(w.Days) == 0 || slices.ContainsFunc(w.Days, func(d string) bool { return weekdays[d] == day })) {
			return w.MinReady
		}
	}
	return p.MinReady
}

func (p *Pool) validateSchedule() error {
	if len(p.Schedule) > 64 {
		return &FieldError{Field: "schedule", Message: "must have at most 64 windows"}
	}
	for i, w := range p.Schedule {
		f := fmt.Sprintf("schedule[%d]", i)
		from, ok := clock(w.From)
		if !ok {
			return &FieldError{Field: f + ".from", Message: fmt.Sprintf("must be a UTC time of day as HH:MM, e.g. 08:30 (got %q)", w.From)}
		}
		to, ok := clock(w.To)
		if !ok {
			return &FieldError{Field: f + ".to", Message: fmt.Sprintf("must be a UTC time of day as HH:MM, e.g. 18:00 (got %q)", w.To)}
		}
		if from == to {
			return &FieldError{Field: f + ".to", Message: "must differ from from (a window of no time)"}
		}
		for _, d := range w.Days {
			if _, ok := weekdays[d]; !ok {
				return &FieldError{Field: f + ".days", Message: fmt.Sprintf("must name days as mon, tue, wed, thu, fri, sat or sun (got %q)", d)}
			}
		}
		if w.MinReady < 0 || w.MinReady > MaxPoolReady {
			return &FieldError{Field: f + ".min_ready", Message: fmt.Sprintf("must be between 0 and %d", MaxPoolReady)}
		}
		if p.Max > 0 && w.MinReady > p.Max {
			return &FieldError{Field: f + ".min_ready", Message: "must be at most max"}
		}
	}
	return nil
}
