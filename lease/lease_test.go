package lease

import (
	"testing"
	"time"
)

func TestDefault_Valid(t *testing.T) {
	if err := Default.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestTiming_Validate(t *testing.T) {
	for _, tt := range []struct {
		name string
		t    Timing
		ok   bool
	}{
		{"default", Default, true},
		{"short, for tests", Timing{RenewInterval: 100 * time.Millisecond, TTL: time.Second, StopBefore: 600 * time.Millisecond, KillBefore: 300 * time.Millisecond}, true},
		{"kill before stop", Timing{RenewInterval: 2 * time.Second, TTL: 15 * time.Second, StopBefore: 3 * time.Second, KillBefore: 6 * time.Second}, false},
		{"kill equals stop", Timing{RenewInterval: 2 * time.Second, TTL: 15 * time.Second, StopBefore: 3 * time.Second, KillBefore: 3 * time.Second}, false},
		{"no renewal fits", Timing{RenewInterval: 10 * time.Second, TTL: 15 * time.Second, StopBefore: 6 * time.Second, KillBefore: 3 * time.Second}, false},
		{"no kill margin", Timing{RenewInterval: 2 * time.Second, TTL: 15 * time.Second, StopBefore: 6 * time.Second}, false},
		{"no renew interval", Timing{TTL: 15 * time.Second, StopBefore: 6 * time.Second, KillBefore: 3 * time.Second}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.t.Validate(); (err == nil) != tt.ok {
				t.Errorf("Validate() = %v, want ok %v", err, tt.ok)
			}
		})
	}
}

func TestTiming_Deadlines(t *testing.T) {
	sent := time.Now() // carries a monotonic reading
	for _, tt := range []struct {
		name               string
		t                  Timing
		wantStop, wantKill time.Duration // after sent
	}{
		{"default", Default, 9 * time.Second, 12 * time.Second},
		{"short", Timing{RenewInterval: 100 * time.Millisecond, TTL: time.Second, StopBefore: 600 * time.Millisecond, KillBefore: 300 * time.Millisecond},
			400 * time.Millisecond, 700 * time.Millisecond},
	} {
		t.Run(tt.name, func(t *testing.T) {
			stop, kill := tt.t.Deadlines(sent)
			if got := stop.Sub(sent); got != tt.wantStop {
				t.Errorf("stop %v after sent, want %v", got, tt.wantStop)
			}
			if got := kill.Sub(sent); got != tt.wantKill {
				t.Errorf("kill %v after sent, want %v", got, tt.wantKill)
			}
			// The monotonic reading survives, so a wall clock step
			// cannot move the deadlines.
			if stop == stop.Round(0) { // Round(0) strips the monotonic reading
				t.Error("stop lost its monotonic reading")
			}
			if !kill.Before(sent.Add(tt.t.TTL)) || !stop.Before(kill) {
				t.Errorf("stop %v, kill %v: want stop < kill < sent + TTL", stop, kill)
			}
		})
	}
}

func TestScaled(t *testing.T) {
	if got := Scaled(0); got != Default {
		t.Errorf("Scaled(0) = %+v, want Default", got)
	}
	got := Scaled(3 * time.Second)
	want := Timing{RenewInterval: 400 * time.Millisecond, TTL: 3 * time.Second, StopBefore: 1200 * time.Millisecond, KillBefore: 600 * time.Millisecond}
	if got != want {
		t.Errorf("Scaled(3s) = %+v, want %+v", got, want)
	}
	if err := got.Validate(); err != nil {
		t.Error(err)
	}
}
