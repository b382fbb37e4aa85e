package kubernetes

import (
	"errors"
	"strings"
	"testing"

	"github.com/berthhq/berth"
)

// Modes blob and dir save through the backend API, which Pods reach only
// when it is configured, and dir also needs the image that syncs the Pod's
// directory: without them the runtime says it cannot keep the mode (and
// what to configure), so Berth refuses such a spawn (or chooses another
// runtime) before it records anything. Volume needs neither.
func TestRuntime_Caps(t *testing.T) {
	spawn := func(m berth.StateMode) *berth.SpawnConfig {
		return &berth.SpawnConfig{Image: "app:1", State: berth.StateConfig{Mode: m}}
	}
	for _, tt := range []struct {
		cfg     Config
		mode    berth.StateMode
		accepts bool
		help    string // in the refusal
	}{
		{Config{StateImage: "berth:1"}, berth.StateModeDir, false, "--kube-backend-api-url"},
		{Config{StateImage: "berth:1"}, berth.StateModeBlob, false, "--kube-backend-api-url"},
		{Config{}, berth.StateModeVolume, true, ""},
		{Config{BackendAPI: true}, berth.StateModeBlob, true, ""},
		{Config{BackendAPI: true}, berth.StateModeDir, false, "--kube-state-image"},
		{Config{BackendAPI: true, StateImage: "berth:1"}, berth.StateModeDir, true, ""},
	} {
		r := &Runtime{cfg: tt.cfg}
		err := r.Caps().Accepts(spawn(tt.mode))
		var fe *berth.FieldError
		switch {
		case tt.accepts && err != nil:
			t.Errorf("%+v: mode %s refused: %v", tt.cfg, tt.mode, err)
		case !tt.accepts && (!errors.As(err, &fe) || fe.Field != "spawn.state.mode" || !strings.Contains(fe.Message, tt.help)):
			t.Errorf("%+v: mode %s: %v, want a FieldError on spawn.state.mode naming %s", tt.cfg, tt.mode, err, tt.help)
		}
		if c := r.Caps(); c.Freeze || c.Commands || !c.Images {
			t.Errorf("Caps() = %+v: want images only, no freezing", c)
		}
	}
}
