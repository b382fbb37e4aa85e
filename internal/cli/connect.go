package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
)

func init() {
	register("connect", "get the backend for a key, spawning it if needed", false, runConnect)
}

const connectUsage = "berth connect [flags] KEY -- CMD ARGS…  (KEY - or --no-key: always a new backend)"

func runConnect(ctx context.Context, args []string, stdio Stdio) error {
	var o clientOptions
	fs := newFlags("connect", connectUsage, stdio)
	o.flags(fs)
	var (
		env                               envVars
		maxIdle, lifetime, grace, startup secondsFlag
	)
	image := fs.String("image", "", "container `image` to run (docker runtime); a command after -- overrides its own")
	fs.Var(&env, "env", "`K=V` in the backend's environment (repeatable)")
	fs.Var(&maxIdle, "max-idle", "stop after this `duration` with no connection, e.g. 5m or 300 (0: never; default 5m)")
	fs.Var(&lifetime, "lifetime", "stop after this `duration` in any case (default: no limit)")
	fs.Var(&grace, "grace", "how long a stop waits after the stop signal before killing, as a `duration` (default 10s)")
	fs.Var(&startup, "startup-timeout", "how long the backend may take to accept HTTP on $PORT, as a `duration` (default 60s)")
	stateMode := fs.String("state-mode", "", "how state is kept between sessions: none, blob, dir or volume (`mode`)")
	rtName := fs.String("runtime", "", "the `runtime` that must run it: process, docker or kubernetes (default: chosen by the server: an image on docker, else kubernetes; a command alone as a process)")
	user := fs.String("user", "", "the `user` the returned URL is for")
	pool := fs.String("pool", "", "claim a ready backend of this warm `pool` (berth pool ls) when the key has none")
	noKey := fs.Bool("no-key", false, "spawn a new backend that holds no key (same as KEY -)")
	wait := fs.Bool("wait", false, "show state changes until the backend is ready; fail if it terminates")
	asJSON := fs.output()

	// After "--" nothing is a flag: it is the backend's command line.
	flagArgs, command := args, []string(nil)
	if i := slices.Index(args, "--"); i >= 0 {
		flagArgs, command = args[:i], args[i+1:]
	}
	rest, err := fs.parse(flagArgs)
	if err != nil {
		return commandWithoutDashes(err, rest, flagArgs, command)
	}

	var key string
	switch {
	case len(rest) > 1:
		return usagef("unexpected argument %q; put the backend's command after --: %s", rest[1], connectUsage)
	case len(rest) == 1 && rest[0] != "-":
		key = rest[0]
		if *noKey {
			return usagef("--no-key contradicts KEY %q; give one or the other", key)
		}
		if err := berth.ValidateKey(key); err != nil {
			return usagef("KEY %q: %v", key, err)
		}
	case len(rest) == 0 && !*noKey:
		return usagef("give the KEY the backend is for (e.g. a document id), or - for a new keyless one: %s", connectUsage)
	}
	switch berth.StateMode(*stateMode) {
	case "", berth.StateModeNone, berth.StateModeBlob, berth.StateModeDir, berth.StateModeVolume:
	default:
		return usagef("--state-mode %q: use none, blob, dir or volume", *stateMode)
	}
	if *rtName != "" && !slices.Contains(berth.RuntimeNames, *rtName) {
		return usagef("--runtime %q: use process, docker or kubernetes, or leave it out to let the server choose", *rtName)
	}

	req := api.ConnectRequest{Key: key, User: *user, Wait: *wait && *asJSON, Pool: *pool}
	if *image != "" || len(command) > 0 {
		req.Spawn = &berth.SpawnConfig{
			Image:                 *image,
			Command:               command,
			Env:                   env,
			MaxIdleSeconds:        maxIdle.ptr(),
			LifetimeSeconds:       lifetime.n,
			GraceSeconds:          grace.ptr(),
			StartupTimeoutSeconds: startup.n,
			State:                 berth.StateConfig{Mode: berth.StateMode(*stateMode)},
			Runtime:               *rtName,
		}
	} else if name := firstSet(fs.FlagSet, "env", "max-idle", "lifetime", "grace", "startup-timeout", "state-mode", "runtime"); name != "" {
		return usagef("--%s only applies to a new backend: give its command after -- or --image: %s", name, connectUsage)
	} else if key == "" && *pool == "" {
		return usagef("a backend without a key is always new: give its command after -- or --image: %s", connectUsage)
	}

	c := o.client()
	start := time.Now()
	resp, err := c.Connect(ctx, req)
	var apiErr *api.Error
	if *asJSON && errors.As(err, &apiErr) && json.Valid(apiErr.Body) {
		// The body says why (with wait, a failed start's reason, exit
		// code and output): a script reads it where it reads an answer.
		var buf bytes.Buffer
		json.Indent(&buf, apiErr.Body, "", "  ")
		fmt.Fprintln(stdio.Out, buf.String())
	}
	if err != nil {
		return o.explain(err, "to spawn one, give its command after -- or --image")
	}
	if *asJSON {
		if err := printJSON(stdio.Out, resp); err != nil {
			return err
		}
		return terminatedErr(resp.BackendID, resp.State, resp.Reason, resp.ExitCode, "")
	}

	last := api.StateEvent{State: resp.State, Reason: resp.Reason, ExitCode: resp.ExitCode}
	if *wait && resp.State.Live() && resp.State != berth.StateReady {
		p := newProgress(stdio.Out, resp.BackendID, start)
		last, err = waitReady(ctx, c, resp.BackendID, p)
		if err != nil {
			return o.explain(err)
		}
	}
	if err := terminatedErr(resp.BackendID, last.State, last.Reason, last.ExitCode, last.Message); err != nil {
		if last.Reason != berth.ReasonStartupTimeout { // its message carries the tail
			printOutputTail(ctx, c, resp.BackendID, stdio.Err)
		}
		return err
	}
	verb := "Connected to"
	if resp.Spawned {
		verb = "Spawned"
	}
	forKey := ""
	if resp.Key != "" {
		forKey = fmt.Sprintf(" for key %q", resp.Key)
	}
	fmt.Fprintf(stdio.Out, "%s backend %s%s — %s.\n\n    %s\n\n", verb, resp.BackendID, forKey, last.State, resp.URL)
	return nil
}

// errReady stops the events stream once the backend is ready.
var errReady = errors.New("ready")

// waitReady shows each state change of a backend on p until it is ready or
// terminated, and returns the last one.
func waitReady(ctx context.Context, c *api.Client, id string, p *progress) (api.StateEvent, error) {
	p.run()
	defer p.stop()
	var last api.StateEvent
	err := c.Events(ctx, id, func(e api.StateEvent) error {
		p.event(e)
		last = e
		if e.State == berth.StateReady {
			return errReady
		}
		return nil
	})
	if errors.Is(err, errReady) {
		err = nil
	}
	return last, err
}

// printOutputTail shows the last lines a failed backend wrote, which
// usually say why it failed; when they cannot be had, the error's hint
// (berth logs ID) still stands.
func printOutputTail(ctx context.Context, c *api.Client, id string, w io.Writer) {
	var buf bytes.Buffer
	if c.Logs(ctx, id, false, &buf) != nil || buf.Len() == 0 {
		return
	}
	lines := strings.Split(strings.TrimRight(buf.String(), "\n"), "\n")
	if len(lines) > outputTailLines {
		lines = lines[len(lines)-outputTailLines:]
	}
	fmt.Fprintf(w, "Its last output:\n  %s\n", strings.Join(lines, "\n  "))
}

const outputTailLines = 10

// commandWithoutDashes turns the error of a flag the backend's command
// line was meant to have (berth connect KEY python3 -m …) into the advice
// to put that command after --, shown on the line that was typed.
func commandWithoutDashes(err error, rest, flagArgs, command []string) error {
	var uf *usageError
	if !errors.As(err, &uf) || uf.unknown == "" || len(rest) == 0 {
		return err
	}
	if len(rest) == 1 {
		return usagef("%s; if it is the backend's, put its command after --: %s", uf.msg, connectUsage)
	}
	// rest[1] starts the command: find it after the key.
	key := slices.Index(flagArgs, rest[0])
	at := key + 1 + slices.Index(flagArgs[key+1:], rest[1])
	fixed := slices.Concat(flagArgs[:at], []string{"--"}, flagArgs[at:], command)
	return usagef("%s is not a flag of berth connect; put the backend's command after --:\n  berth connect %s", uf.unknown, shellJoin(fixed))
}

// terminatedErr is the command's error when the backend it got is terminated.
func terminatedErr(id string, s berth.State, r berth.Reason, exitCode *int, msg string) error {
	if s != berth.StateTerminated {
		return nil
	}
	err := fmt.Sprintf("backend %s terminated", id)
	if rt := reasonText(r, exitCode); rt != "" {
		err += ": " + rt
	}
	if msg != "" {
		err += ": " + msg
	}
	return errors.New(err + fmt.Sprintf(" (see its output: berth logs %s)", id))
}

// firstSet returns the first of names that was given on the command line.
func firstSet(fs *flag.FlagSet, names ...string) string {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for _, n := range names {
		if set[n] {
			return n
		}
	}
	return ""
}

// secondsFlag is a flag for the API's *_seconds fields that takes either
// seconds ("300") or a duration ("5m").
type secondsFlag struct {
	n   int
	set bool
}

func (f *secondsFlag) String() string {
	if f == nil || !f.set {
		return ""
	}
	return strconv.Itoa(f.n)
}

func (f *secondsFlag) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil {
		d, derr := time.ParseDuration(s)
		if derr != nil {
			return errors.New("want seconds or a duration such as 30s, 5m or 1h")
		}
		if d%time.Second != 0 {
			return errors.New("must be whole seconds")
		}
		n = int(d / time.Second)
	}
	if n < 0 {
		return errors.New("must not be negative")
	}
	f.n, f.set = n, true
	return nil
}

// ptr is the value for optional fields where 0 means something (never idle).
func (f *secondsFlag) ptr() *int {
	if !f.set {
		return nil
	}
	n := f.n
	return &n
}

// envVars collects repeated --env K=V flags.
type envVars map[string]string

func (e *envVars) String() string {
	if e == nil {
		return ""
	}
	kv := make([]string, 0, len(*e))
	for k, v := range *e {
		kv = append(kv, k+"="+v)
	}
	sort.Strings(kv)
	return strings.Join(kv, " ")
}

func (e *envVars) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return errors.New("want K=V")
	}
	if *e == nil {
		*e = envVars{}
	}
	(*e)[k] = v
	return nil
}
