package berth

import (
	"strings"
	"testing"
)

func TestValidateKey(t *testing.T) {
	tests := []struct {
		key string
		ok  bool
	}{
		{"doc-42", true},
		{"a", true},
		{"org/team@x:doc_1.v2", true},
		{strings.Repeat("k", 128), true},
		{"", false},
		{strings.Repeat("k", 129), false},
		{"doc 42", false},
		{"doc?x", false},
		{"déjà", false},
		{"a\x00b", false},
		{"%2e%2e", false},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			err := ValidateKey(tt.key)
			if got := err == nil; got != tt.ok {
				t.Errorf("ValidateKey(%q) = %v, want ok=%v", tt.key, err, tt.ok)
			}
		})
	}
}

// TestValidateKey_Message: the error names the offending character as
// the caller wrote it, at its position in characters, not a byte of it.
func TestValidateKey_Message(t *testing.T) {
	tests := []struct{ key, want string }{
		{"doc-é", `character 'é' at 4 is not allowed`},
		{"déjà", `character 'é' at 1 is not allowed`},
		{"日本/doc 42", `character '日' at 0 is not allowed`},
		{"doc 42", `character ' ' at 3 is not allowed`},
		{"ab\xffc", `byte 0xff at 2 is not valid UTF-8`},
		{strings.Repeat("é", 100), `character 'é' at 0 is not allowed`},
		{strings.Repeat("k", 129), `is 129 characters; at most 128 allowed`},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			err := ValidateKey(tt.key)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("ValidateKey(%q) = %v, want an error saying %q", tt.key, err, tt.want)
			}
		})
	}
}

func FuzzValidateKey(f *testing.F) {
	for _, s := range []string{"doc-42", "", "../etc", "a/b@c:d", strings.Repeat("x", 200)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, key string) {
		err := ValidateKey(key)
		if err != nil {
			return
		}
		if len(key) < 1 || len(key) > MaxKeyLen {
			t.Fatalf("accepted key of length %d", len(key))
		}
		for i := 0; i < len(key); i++ {
			if !strings.ContainsRune("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:/@-", rune(key[i])) {
				t.Fatalf("accepted %q with byte %q", key, key[i])
			}
		}
	})
}

func TestState_CanMoveTo(t *testing.T) {
	order := []State{StateScheduled, StateStarting, StateReady, StateTerminating, StateTerminated}
	for i, from := range order {
		for j, to := range order {
			if got, want := from.CanMoveTo(to), j > i; got != want {
				t.Errorf("%s → %s: got %v, want %v", from, to, got, want)
			}
		}
		if from.CanMoveTo("bogus") {
			t.Errorf("%s → bogus allowed", from)
		}
	}
	if StateTerminated.Live() || !StateTerminating.Live() {
		t.Error("Live() wrong")
	}
}

func TestExpandArgs(t *testing.T) {
	env := map[string]string{"PORT": "8123", "BERTH_KEY": "doc"}
	got := ExpandArgs([]string{"--port=${PORT}", "$PORT", "$BERTH_KEY/x", "$$PORT", "${NOPE}", "$", "a$", "${open"}, env)
	want := []string{"--port=8123", "8123", "doc/x", "$PORT", "", "$", "a$", "${open"}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("arg %d: got %q, want %q", i, got[i], want[i])
		}
	}
}

func TestSpawnConfig_Validate(t *testing.T) {
	neg := -1
	tests := []struct {
		name  string
		c     SpawnConfig
		field string
	}{
		{"ok", SpawnConfig{Command: []string{"x"}}, ""},
		{"image only", SpawnConfig{Image: "app:1"}, ""},
		{"empty", SpawnConfig{}, "spawn.command"},
		{"empty program", SpawnConfig{Command: []string{""}}, "spawn.command"},
		{"negative idle", SpawnConfig{Command: []string{"x"}, MaxIdleSeconds: &neg}, "spawn.max_idle_seconds"},
		{"negative grace", SpawnConfig{Command: []string{"x"}, GraceSeconds: &neg}, "spawn.grace_seconds"},
		{"absurd lifetime", SpawnConfig{Command: []string{"x"}, LifetimeSeconds: 1 << 40}, "spawn.lifetime_seconds"},
		{"reserved env", SpawnConfig{Command: []string{"x"}, Env: map[string]string{"PORT": "1"}}, "spawn.env.PORT"},
		{"bad signal", SpawnConfig{Command: []string{"x"}, StopSignal: "SIGFOO"}, "spawn.stop_signal"},
		{"bad mode", SpawnConfig{Command: []string{"x"}, State: StateConfig{Mode: "tape"}}, "spawn.state.mode"},
		{"bad pull", SpawnConfig{Image: "a", PullPolicy: "sometimes"}, "spawn.pull_policy"},
		{"named runtime", SpawnConfig{Image: "a", Runtime: "kubernetes"}, ""},
		{"unknown runtime", SpawnConfig{Image: "a", Runtime: "podman"}, "spawn.runtime"},
		{"runtime in capitals", SpawnConfig{Command: []string{"x"}, Runtime: "Process"}, "spawn.runtime"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.c.Validate("spawn")
			if tt.field == "" {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			fe, ok := err.(*FieldError)
			if !ok || fe.Field != tt.field {
				t.Fatalf("got %v, want a FieldError for %s", err, tt.field)
			}
		})
	}
}
