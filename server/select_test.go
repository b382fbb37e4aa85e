package server

import (
	"errors"
	"strings"
	"testing"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/runtime"
)

func known(t *testing.T, names ...string) map[string]runtime.Caps {
	t.Helper()
	m := map[string]runtime.Caps{}
	for _, n := range names {
		c, ok := runtime.Known(n)
		if !ok {
			t.Fatalf("runtime.Known(%q): no such runtime", n)
		}
		m[n] = c
	}
	return m
}

func TestChooseRuntime(t *testing.T) {
	img := berth.SpawnConfig{Image: "app:1"}
	cmd := berth.SpawnConfig{Command: []string{"./server"}}
	both := berth.SpawnConfig{Image: "app:1", Command: []string{"./server"}}
	named := func(sc berth.SpawnConfig, rt string) berth.SpawnConfig { sc.Runtime = rt; return sc }
	freeze := func(sc berth.SpawnConfig) berth.SpawnConfig { sc.IdleAction = berth.IdleFreeze; return sc }
	mode := func(sc berth.SpawnConfig, m berth.StateMode) berth.SpawnConfig { sc.State.Mode = m; return sc }
	k8sNoDir := runtime.Caps{Images: true, StateModes: []berth.StateMode{berth.StateModeBlob, berth.StateModeVolume}}

	tests := []struct {
		name      string
		sc        berth.SpawnConfig
		local     map[string]runtime.Caps
		elsewhere []string
		want      string
		field     string // the error's field, when it fails
		say       string // and words its message must have
	}{
		// Today's choices, unchanged for spawns that name no runtime.
		{name: "image goes to docker", sc: img, local: known(t, "process", "docker"), want: "docker"},
		{name: "image and command go to docker", sc: both, local: known(t, "process", "docker"), want: "docker"},
		{name: "command alone is a process", sc: cmd, local: known(t, "process", "docker"), want: "process"},
		{name: "image goes to kubernetes without docker", sc: img, local: known(t, "kubernetes"), want: "kubernetes"},
		{name: "docker before kubernetes", sc: img, local: known(t, "docker", "kubernetes"), want: "docker"},
		{name: "image without a container runtime", sc: both, local: known(t, "process"),
			field: "spawn.image", say: "this server runs process"},
		{name: "command without the process runtime", sc: cmd, local: known(t, "docker"),
			field: "spawn.command", say: "this server runs docker"},
		{name: "freeze on kubernetes is refused", sc: freeze(img), local: known(t, "kubernetes"),
			field: "spawn.idle_action", say: "the kubernetes runtime cannot freeze"},
		{name: "freeze passes kubernetes over for docker", sc: freeze(img), local: known(t, "kubernetes", "docker"), want: "docker"},
		{name: "state mode the runtime cannot keep", sc: mode(img, berth.StateModeDir), local: map[string]runtime.Caps{"kubernetes": k8sNoDir},
			field: "spawn.state.mode", say: "cannot keep state mode dir"},

		// Named runtimes.
		{name: "named process", sc: named(cmd, "process"), local: known(t, "process", "docker"), want: "process"},
		{name: "named docker with only an image", sc: named(img, "docker"), local: known(t, "process", "docker"), want: "docker"},
		{name: "named kubernetes over docker", sc: named(img, "kubernetes"), local: known(t, "docker", "kubernetes"), want: "kubernetes"},
		{name: "named process with only an image", sc: named(img, "process"), local: known(t, "process", "docker"),
			field: "spawn.runtime", say: "the process runtime cannot run this spawn: it runs commands, not images (spawn.image)"},
		{name: "named docker with a command alone", sc: named(cmd, "docker"), local: known(t, "process", "docker"),
			field: "spawn.runtime", say: "runs images"},
		{name: "named runtime this server does not run", sc: named(img, "kubernetes"), local: known(t, "process", "docker"),
			field: "spawn.runtime", say: "does not run the kubernetes runtime; this server runs docker, process"},
		{name: "named runtime that cannot freeze", sc: freeze(named(img, "kubernetes")), local: known(t, "docker", "kubernetes"),
			field: "spawn.runtime", say: "cannot freeze"},

		// Replicas: runtimes only other nodes run.
		{name: "image placed on a node with docker", sc: img, local: known(t, "process"), elsewhere: []string{"docker"}, want: "docker"},
		{name: "this node's runtime first", sc: img, local: known(t, "kubernetes"), elsewhere: []string{"docker"}, want: "kubernetes"},
		{name: "named runtime of another node", sc: named(img, "kubernetes"), local: known(t, "process", "docker"), elsewhere: []string{"kubernetes"}, want: "kubernetes"},
		{name: "named runtime no node runs", sc: named(cmd, "process"), local: known(t, "docker"), elsewhere: []string{"kubernetes"},
			field: "spawn.runtime", say: "this server runs docker and other nodes kubernetes"},
		{name: "freeze only where the runtime can", sc: freeze(img), local: known(t, "kubernetes"), elsewhere: []string{"docker"}, want: "docker"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := chooseRuntime(&tt.sc, tt.local, tt.elsewhere)
			if tt.field == "" {
				if err != nil || got != tt.want {
					t.Fatalf("chooseRuntime = %q, %v; want %q", got, err, tt.want)
				}
				return
			}
			var fe *berth.FieldError
			if !errors.As(err, &fe) || fe.Field != tt.field {
				t.Fatalf("chooseRuntime = %q, %v; want a FieldError on %s", got, err, tt.field)
			}
			if !strings.Contains(fe.Message, tt.say) {
				t.Errorf("message %q does not say %q", fe.Message, tt.say)
			}
		})
	}
}
