package berth

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// SpawnConfig says what to run for a backend and how to treat it.
type SpawnConfig struct {
	Image                 string            `json:"image,omitempty"`
	Command               []string          `json:"command,omitempty"`
	Env                   map[string]string `json:"env,omitempty"`
	MaxIdleSeconds        *int              `json:"max_idle_seconds,omitempty"`
	LifetimeSeconds       int               `json:"lifetime_seconds,omitempty"`
	GraceSeconds          *int              `json:"grace_seconds,omitempty"`
	StartupTimeoutSeconds int               `json:"startup_timeout_seconds,omitempty"`
	StopSignal            string            `json:"stop_signal,omitempty"`
	PullPolicy            string            `json:"pull_policy,omitempty"`
	Resources             Resources         `json:"resources,omitempty"`
	State                 StateConfig       `json:"state,omitempty"`
	// ReadOnlyRootFS asks container runtimes for a read-only root filesystem.
	ReadOnlyRootFS bool `json:"read_only_root_fs,omitempty"`
	// IdleAction is what max_idle_seconds of idleness does: "stop" (the
	// default) or "freeze" (see freeze.go).
	IdleAction       IdleAction `json:"idle_action,omitempty"`
	MaxFrozenSeconds int        `json:"max_frozen_seconds,omitempty"`
	// Runtime names the runtime that must run the backend (one of
	// RuntimeNames); empty lets Berth choose by what the spawn needs
	// (docs/DESIGN.md, "Choosing a runtime").
	Runtime string `json:"runtime,omitempty"`
}

// RuntimeNames are the runtimes a spawn may name, in the order Berth tries
// them for a spawn that names none: the first one this server (or, with
// replicas, some node) runs that can run the spawn is chosen. Docker comes
// before kubernetes so that a host with both keeps images local, and
// neither runs a command without an image, which only process does.
var RuntimeNames = []string{"docker", "kubernetes", "process"}

// Resources are per-backend limits. Zero means the runtime's default.
type Resources struct {
	CPUMillis int `json:"cpu_millis,omitempty"`
	MemoryMB  int `json:"memory_mb,omitempty"`
	Pids      int `json:"pids,omitempty"`
}

// StateConfig says how a backend's state is persisted.
type StateConfig struct {
	Mode                StateMode `json:"mode,omitempty"`
	SaveIntervalSeconds int       `json:"save_interval_seconds,omitempty"`
}

// StateMode is one of the ways Berth keeps a backend's state.
type StateMode string

const (
	StateModeNone   StateMode = "none"
	StateModeBlob   StateMode = "blob"
	StateModeDir    StateMode = "dir"
	StateModeVolume StateMode = "volume"
)

// Defaults and bounds for spawn configuration.
const (
	DefaultMaxIdle        = 300 * time.Second
	DefaultGrace          = 10 * time.Second
	DefaultStartupTimeout = 60 * time.Second
	DefaultSaveInterval   = 30 * time.Second

	maxSeconds      = 7 * 24 * 3600 // a week: anything longer is a mistake
	maxGraceSeconds = 3600
	maxEnvEntries   = 256
	maxArgs         = 1024
)

// intRange is what an integer field of a spawn config allows: 0 to max,
// where 0 may stand for something else than itself.
type intRange struct {
	max  int
	zero string // what 0 means, if not 0 itself
}

func (r intRange) String() string {
	if r.zero == "" {
		return fmt.Sprintf("between 0 and %d", r.max)
	}
	return fmt.Sprintf("between 1 and %d (0 means %s)", r.max, r.zero)
}

// intRanges are a spawn config's integer fields by their JSON path under
// the spawn config. Validate checks them, and IntRange words them for a
// decoder that met a number no int holds.
var intRanges = map[string]intRange{
	"max_idle_seconds":            {max: maxSeconds},
	"lifetime_seconds":            {max: maxSeconds, zero: "unbounded"},
	"grace_seconds":               {max: maxGraceSeconds},
	"startup_timeout_seconds":     {max: 3600, zero: "the default, 60"},
	"resources.cpu_millis":        {max: 1_000_000},
	"resources.memory_mb":         {max: 1 << 20},
	"resources.pids":              {max: 1 << 22},
	"state.save_interval_seconds": {max: 86400, zero: "the default, 30"},
	"max_frozen_seconds":          {max: maxSeconds, zero: "the default, 3600"},
}

// IntRange says which values the integer field at path (under the spawn
// config, as in JSON: "resources.memory_mb") allows, as "between 0 and
// 604800"; ok is false when path names no integer field.
func IntRange(path string) (r string, ok bool) {
	ir, ok := intRanges[path]
	if !ok {
		return "", false
	}
	return ir.String(), true
}

// MaxIdle is the idle timeout; 0 means the backend is never stopped for idleness.
func (c *SpawnConfig) MaxIdle() time.Duration {
	if c.MaxIdleSeconds == nil {
		return DefaultMaxIdle
	}
	return time.Duration(*c.MaxIdleSeconds) * time.Second
}

// Lifetime is the longest a backend may run; 0 means unbounded.
func (c *SpawnConfig) Lifetime() time.Duration {
	return time.Duration(c.LifetimeSeconds) * time.Second
}

// Grace is how long a stop waits after the stop signal before killing.
func (c *SpawnConfig) Grace() time.Duration {
	if c.GraceSeconds == nil {
		return DefaultGrace
	}
	return time.Duration(*c.GraceSeconds) * time.Second
}

// StartupTimeout bounds starting → ready.
func (c *SpawnConfig) StartupTimeout() time.Duration {
	if c.StartupTimeoutSeconds == 0 {
		return DefaultStartupTimeout
	}
	return time.Duration(c.StartupTimeoutSeconds) * time.Second
}

// SaveInterval is how often state is saved when changed.
func (c *SpawnConfig) SaveInterval() time.Duration {
	if c.State.SaveIntervalSeconds == 0 {
		return DefaultSaveInterval
	}
	return time.Duration(c.State.SaveIntervalSeconds) * time.Second
}

// StateMode returns the state mode, "none" when unset.
func (c *SpawnConfig) StateMode() StateMode {
	if c.State.Mode == "" {
		return StateModeNone
	}
	return c.State.Mode
}

// Validate checks the config; errors are *FieldError naming a field under
// prefix (e.g. "spawn.command").
func (c *SpawnConfig) Validate(prefix string) error {
	f := func(name string) string { return prefix + "." + name }
	if c.Image == "" && len(c.Command) == 0 {
		return fieldErr(f("command"), "give a command (process runtime) or an image (docker)")
	}
	if len(c.Command) > maxArgs {
		return fieldErr(f("command"), "has %d arguments; at most %d allowed", len(c.Command), maxArgs)
	}
	if len(c.Command) > 0 && strings.TrimSpace(c.Command[0]) == "" {
		return fieldErr(f("command"), "the program (first element) must not be empty")
	}
	for i, a := range c.Command {
		if strings.IndexByte(a, 0) >= 0 {
			return fieldErr(fmt.Sprintf("%s[%d]", f("command"), i), "must not contain NUL bytes")
		}
	}
	if strings.IndexByte(c.Image, 0) >= 0 || strings.ContainsAny(c.Image, " \t\n") {
		return fieldErr(f("image"), "is not a valid image reference")
	}
	if len(c.Env) > maxEnvEntries {
		return fieldErr(f("env"), "has %d entries; at most %d allowed", len(c.Env), maxEnvEntries)
	}
	for k, v := range c.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return fieldErr(f("env"), "variable name %q is not valid", k)
		}
		if strings.IndexByte(v, 0) >= 0 {
			return fieldErr(f("env."+k), "must not contain NUL bytes")
		}
		if reservedEnv(k) {
			return fieldErr(f("env."+k), "is set by Berth and cannot be overridden")
		}
	}
	for _, v := range []struct {
		name string
		v    *int
	}{
		{"max_idle_seconds", c.MaxIdleSeconds}, {"lifetime_seconds", &c.LifetimeSeconds},
		{"grace_seconds", c.GraceSeconds}, {"startup_timeout_seconds", &c.StartupTimeoutSeconds},
		{"max_frozen_seconds", &c.MaxFrozenSeconds},
	} {
		if err := intField(prefix, v.name, v.v); err != nil {
			return err
		}
	}
	if c.StopSignal != "" {
		if _, ok := Signals[strings.ToUpper(c.StopSignal)]; !ok {
			return fieldErr(f("stop_signal"), "%q is not a known signal; use e.g. SIGTERM, SIGINT, SIGQUIT", c.StopSignal)
		}
	}
	if err := c.IdleAction.validate(f("idle_action")); err != nil {
		return err
	}
	if c.Runtime != "" && !slices.Contains(RuntimeNames, c.Runtime) {
		return fieldErr(f("runtime"), "%q is not a runtime; use process, docker or kubernetes (or leave it out to let Berth choose)", c.Runtime)
	}
	switch c.PullPolicy {
	case "", "if_not_present", "always", "never":
	default:
		return fieldErr(f("pull_policy"), "must be if_not_present, always or never")
	}
	for _, v := range []struct {
		name string
		v    *int
	}{
		{"resources.cpu_millis", &c.Resources.CPUMillis}, {"resources.memory_mb", &c.Resources.MemoryMB},
		{"resources.pids", &c.Resources.Pids},
	} {
		if err := intField(prefix, v.name, v.v); err != nil {
			return err
		}
	}
	switch c.State.Mode {
	case "", StateModeNone, StateModeBlob, StateModeDir, StateModeVolume:
	default:
		return fieldErr(f("state.mode"), "must be none, blob, dir or volume")
	}
	return intField(prefix, "state.save_interval_seconds", &c.State.SaveIntervalSeconds)
}

// intField checks the integer field name (see intRanges); nil is unset.
func intField(prefix, name string, v *int) error {
	r := intRanges[name]
	if v != nil && (*v < 0 || *v > r.max) {
		return fieldErr(prefix+"."+name, "must be %s", r)
	}
	return nil
}

// reservedEnv names the variables Berth sets for every backend.
func reservedEnv(k string) bool {
	return k == "PORT" || strings.HasPrefix(k, "BERTH_")
}

// Signals are the stop signals a spawn may name, by number.
var Signals = map[string]int{
	"SIGHUP": 1, "SIGINT": 2, "SIGQUIT": 3, "SIGKILL": 9, "SIGUSR1": 10,
	"SIGUSR2": 12, "SIGTERM": 15, "SIGWINCH": 28,
	"HUP": 1, "INT": 2, "QUIT": 3, "KILL": 9, "USR1": 10, "USR2": 12, "TERM": 15, "WINCH": 28,
}

// ExpandArgs replaces ${NAME} and $NAME in args with values from env, so
// programs that take their port as a flag run unchanged. Unknown names expand
// to the empty string, as in a shell.
func ExpandArgs(args []string, env map[string]string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = expand(a, env)
	}
	return out
}

func expand(s string, env map[string]string) string {
	if strings.IndexByte(s, '$') < 0 {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 == len(s) {
			b.WriteByte(s[i])
			continue
		}
		if s[i+1] == '$' { // "$$" is a literal dollar
			b.WriteByte('$')
			i++
			continue
		}
		if s[i+1] == '{' {
			end := strings.IndexByte(s[i+2:], '}')
			if end < 0 {
				b.WriteString(s[i:])
				break
			}
			b.WriteString(env[s[i+2:i+2+end]])
			i += 2 + end
			continue
		}
		j := i + 1
		for j < len(s) && (s[j] == '_' || s[j] >= 'A' && s[j] <= 'Z' || s[j] >= 'a' && s[j] <= 'z' || j > i+1 && s[j] >= '0' && s[j] <= '9') {
			j++
		}
		if j == i+1 {
			b.WriteByte('$')
			continue
		}
		b.WriteString(env[s[i+1:j]])
		i = j - 1
	}
	return b.String()
}
