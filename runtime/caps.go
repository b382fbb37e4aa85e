package runtime

import (
	"fmt"
	"slices"

	"github.com/berthhq/berth"
)

// Caps says which spawns a runtime can run. Berth chooses a runtime for a
// spawn by them before it records anything (docs/DESIGN.md, "Choosing a
// runtime"), so a spawn no runtime can run is refused with the field at
// fault instead of failing at its start.
type Caps struct {
	// Commands: runs a spawn's command with no image (a program of the
	// host).
	Commands bool
	// Images: runs a spawn's image; a command then replaces the image's
	// entrypoint.
	Images bool
	// Freeze: can freeze idle instances (idle_action "freeze"); the
	// runtime is then a Freezer.
	Freeze bool
	// StateModes are the state modes besides none the runtime can keep.
	StateModes []berth.StateMode
	// StateHelp says what would let the runtime keep the modes it lacks
	// (its configuration), for the refusal of a spawn that asks for one.
	StateHelp string
}

// Known returns the capabilities of the runtime called name in the
// configuration that can do most, for a runtime this Berth does not run
// itself: a replica placing a spawn on another node that runs it has only
// the name the node registered. ok is false for a name no runtime has.
// Each runtime's own Caps stays within these (its tests check it).
func Known(name string) (c Caps, ok bool) {
	all := []berth.StateMode{berth.StateModeBlob, berth.StateModeDir, berth.StateModeVolume}
	switch name {
	case "process":
		return Caps{Commands: true, Freeze: true, StateModes: all}, true
	case "docker":
		return Caps{Images: true, Freeze: true, StateModes: all}, true
	case "kubernetes":
		return Caps{Images: true, StateModes: all}, true
	}
	return Caps{}, false
}

// Accepts returns nil when a runtime with these capabilities can run sc,
// else a *berth.FieldError naming the spawn field it cannot honour
// ("spawn.image", "spawn.command", "spawn.idle_action",
// "spawn.state.mode"), whose Message reads after the runtime's name ("the
// process runtime …"). Whether the image or command is the problem is
// judged first: Kind tells those refusals apart from the others.
func (c Caps) Accepts(sc *berth.SpawnConfig) error {
	switch {
	case sc.Image != "" && !c.Images:
		return &berth.FieldError{Field: "spawn.image", Message: "runs commands, not images"}
	case sc.Image == "" && !c.Commands:
		return &berth.FieldError{Field: "spawn.image", Message: "runs images: give spawn.image"}
	case sc.Freezes() && !c.Freeze:
		return &berth.FieldError{Field: "spawn.idle_action", Message: "cannot freeze backends; use stop"}
	}
	if m := sc.StateMode(); m != berth.StateModeNone && !slices.Contains(c.StateModes, m) {
		msg := fmt.Sprintf("cannot keep state mode %s", m)
		if c.StateHelp != "" {
			msg += " as configured (" + c.StateHelp + ")"
		}
		return &berth.FieldError{Field: "spawn.state.mode", Message: msg}
	}
	return nil
}

// Kind reports whether a runtime with these capabilities runs spawns of
// sc's kind (an image, or a command alone), whatever else sc asks.
func (c Caps) Kind(sc *berth.SpawnConfig) bool {
	if sc.Image != "" {
		return c.Images
	}
	return c.Commands
}

// CapsOf is rt's capabilities, with Freeze only for a Freezer: what a
// runtime can do is what it implements, whatever it says.
func CapsOf(rt Runtime) Caps {
	c := rt.Caps()
	if _, ok := rt.(Freezer); !ok {
		c.Freeze = false
	}
	return c
}
