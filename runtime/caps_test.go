package runtime

import (
	"errors"
	"testing"

	"github.com/berthhq/berth"
)

func TestCaps_Accepts(t *testing.T) {
	proc, _ := Known("process")
	kube, _ := Known("kubernetes")
	noDir := Caps{Images: true, StateModes: []berth.StateMode{berth.StateModeBlob}}
	tests := []struct {
		name  string
		caps  Caps
		sc    berth.SpawnConfig
		field string // "" accepted
		kind  bool
	}{
		{"command", proc, berth.SpawnConfig{Command: []string{"x"}}, "", true},
		{"image on process", proc, berth.SpawnConfig{Image: "a"}, "spawn.image", false},
		{"command alone on kubernetes", kube, berth.SpawnConfig{Command: []string{"x"}}, "spawn.image", false},
		{"image with command", kube, berth.SpawnConfig{Image: "a", Command: []string{"x"}}, "", true},
		{"freeze", kube, berth.SpawnConfig{Image: "a", IdleAction: berth.IdleFreeze}, "spawn.idle_action", true},
		{"freeze on process", proc, berth.SpawnConfig{Command: []string{"x"}, IdleAction: berth.IdleFreeze}, "", true},
		{"state mode none always", noDir, berth.SpawnConfig{Image: "a", State: berth.StateConfig{Mode: berth.StateModeNone}}, "", true},
		{"state mode kept", noDir, berth.SpawnConfig{Image: "a", State: berth.StateConfig{Mode: berth.StateModeBlob}}, "", true},
		{"state mode not kept", noDir, berth.SpawnConfig{Image: "a", State: berth.StateConfig{Mode: berth.StateModeDir}}, "spawn.state.mode", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.caps.Accepts(&tt.sc)
			var fe *berth.FieldError
			switch {
			case tt.field == "" && err != nil:
				t.Errorf("Accepts = %v, want nil", err)
			case tt.field != "" && (!errors.As(err, &fe) || fe.Field != tt.field):
				t.Errorf("Accepts = %v, want a FieldError on %s", err, tt.field)
			}
			if got := tt.caps.Kind(&tt.sc); got != tt.kind {
				t.Errorf("Kind = %v, want %v", got, tt.kind)
			}
		})
	}
}

// Every name a spawn may give is a runtime Known has, and no other.
func TestKnown_RuntimeNames(t *testing.T) {
	for _, n := range berth.RuntimeNames {
		if _, ok := Known(n); !ok {
			t.Errorf("Known(%q): not known", n)
		}
	}
	if _, ok := Known("podman"); ok {
		t.Error(`Known("podman") is known`)
	}
}
