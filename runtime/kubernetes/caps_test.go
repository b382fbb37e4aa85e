package kubernetes

import (
	"errors"
	"testing"

	"github.com/berthhq/berth"
)

// Mode dir needs the image that syncs the Pod's directory: without one
// the runtime says it cannot keep it, so Berth refuses such a spawn (or
// chooses another runtime) before it records anything.
func TestRuntime_Caps(t *testing.T) {
	dir := &berth.SpawnConfig{Image: "app:1", State: berth.StateConfig{Mode: berth.StateModeDir}}
	for _, tt := range []struct {
		stateImage string
		accepts    bool
	}{{"", false}, {"berth:1", true}} {
		r := &Runtime{cfg: Config{StateImage: tt.stateImage}}
		err := r.Caps().Accepts(dir)
		var fe *berth.FieldError
		switch {
		case tt.accepts && err != nil:
			t.Errorf("StateImage %q: mode dir refused: %v", tt.stateImage, err)
		case !tt.accepts && (!errors.As(err, &fe) || fe.Field != "spawn.state.mode"):
			t.Errorf("StateImage %q: mode dir: %v, want a FieldError on spawn.state.mode", tt.stateImage, err)
		}
		if c := r.Caps(); c.Freeze || c.Commands || !c.Images {
			t.Errorf("Caps() = %+v: want images only, no freezing", c)
		}
	}
}
