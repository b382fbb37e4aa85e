package server

import (
	"fmt"
	"slices"
	"strings"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/runtime"
)

// chooseRuntime names the runtime that runs sc (docs/DESIGN.md, "Choosing
// a runtime"): the one sc names, else the first of berth.RuntimeNames
// that can run it among those this node runs (local, by their own Caps),
// else among those only other live nodes run (elsewhere, by name: their
// runtime.Known capabilities). Errors are *berth.FieldError: a named
// runtime nobody runs or that cannot run sc is spawn.runtime's fault;
// without a name, the field the runtimes that run sc's kind (image or
// command) refused, or spawn.image / spawn.command when none runs it.
func chooseRuntime(sc *berth.SpawnConfig, local map[string]runtime.Caps, elsewhere []string) (string, error) {
	capsOf := func(name string) (runtime.Caps, bool) {
		if c, ok := local[name]; ok {
			return c, true
		}
		if slices.Contains(elsewhere, name) {
			return runtime.Known(name)
		}
		return runtime.Caps{}, false
	}
	if sc.Runtime != "" {
		c, ok := capsOf(sc.Runtime)
		if !ok {
			return "", &berth.FieldError{Field: "spawn.runtime", Message: fmt.Sprintf("this server does not run the %s runtime; %s", sc.Runtime, runs(local, elsewhere))}
		}
		if err := c.Accepts(sc); err != nil {
			fe := err.(*berth.FieldError)
			return "", &berth.FieldError{Field: "spawn.runtime", Message: fmt.Sprintf("the %s runtime cannot run this spawn: it %s (%s)", sc.Runtime, fe.Message, fe.Field)}
		}
		return sc.Runtime, nil
	}
	// The first refusal of a runtime that runs sc's kind; this node's
	// runtimes come first (pass), then those only other nodes run.
	var refusal *berth.FieldError
	for _, pass := range []bool{true, false} {
		for _, name := range berth.RuntimeNames {
			c, ok := local[name]
			if !pass {
				if ok || !slices.Contains(elsewhere, name) {
					continue
				}
				c, ok = runtime.Known(name)
			}
			if !ok {
				continue
			}
			err := c.Accepts(sc)
			if err == nil {
				return name, nil
			}
			if fe := err.(*berth.FieldError); refusal == nil && c.Kind(sc) {
				refusal = &berth.FieldError{Field: fe.Field, Message: fmt.Sprintf("the %s runtime %s", name, fe.Message)}
			}
		}
	}
	if refusal != nil {
		return "", refusal
	}
	if sc.Image != "" {
		return "", &berth.FieldError{Field: "spawn.image", Message: fmt.Sprintf("no container runtime is available (is Docker running?); %s; give spawn.command alone to run a local process", runs(local, elsewhere))}
	}
	return "", &berth.FieldError{Field: "spawn.command", Message: fmt.Sprintf("a command alone needs the process runtime; %s; give spawn.image", runs(local, elsewhere))}
}

// runs says which runtimes this server (and the other nodes) run, in the
// order of berth.RuntimeNames.
func runs(local map[string]runtime.Caps, elsewhere []string) string {
	var here, there []string
	for _, name := range berth.RuntimeNames {
		if _, ok := local[name]; ok {
			here = append(here, name)
		} else if slices.Contains(elsewhere, name) {
			there = append(there, name)
		}
	}
	s := "this server runs " + orNone(here)
	if len(there) > 0 {
		s += " and other nodes " + strings.Join(there, ", ")
	}
	return s
}

func orNone(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

// runtimeCaps is the capabilities of this node's runtimes, by name.
func (m *Manager) runtimeCaps() map[string]runtime.Caps {
	caps := make(map[string]runtime.Caps, len(m.cfg.Runtimes))
	for name, rt := range m.cfg.Runtimes {
		caps[name] = runtime.CapsOf(rt)
	}
	return caps
}

// runtimeFor chooses the runtime of a spawn: its name, and this node's
// instance of it (nil when only other nodes run it, which a replica then
// places the spawn on).
func (m *Manager) runtimeFor(sc *berth.SpawnConfig) (string, runtime.Runtime, error) {
	var elsewhere []string
	if m.cluster != nil {
		elsewhere = m.cluster.runtimes(m.cfg.Node)
	}
	name, err := chooseRuntime(sc, m.runtimeCaps(), elsewhere)
	if err != nil {
		return "", nil, err
	}
	return name, m.cfg.Runtimes[name], nil
}
