package cli

import (
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// TestCompletion_Bash loads the script into a real bash and asks it what
// it completes, as a shell does on Tab.
func TestCompletion_Bash(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Fatalf("bash: %v", err)
	}
	code, script, stderr := runCLI(t, "completion", "bash")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	path := filepath.Join(t.TempDir(), "berth.bash")
	if err := os.WriteFile(path, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		line string // what is typed; completion is asked for its last word
		want []string
	}{
		{"berth p", []string{"pool", "ps"}},
		{"berth st", []string{"state"}},
		{"berth ps --a", []string{"--all", "--api", "--api-key"}},
		{"berth ps --output ", []string{"text", "json"}},
		{"berth ps --state r", []string{"ready"}},
		{"berth connect --st", []string{"--startup-timeout", "--state-mode"}},
		{"berth connect --state-mode b", []string{"blob"}},
		{"berth connect --w", []string{"--wait"}},
		{"berth logs -", []string{"--api", "--api-key", "-f", "--json", "--output"}},
		{"berth state ", []string{"ls", "get", "restore"}},
		{"berth completion ", []string{"bash", "zsh"}},
		{"berth dev --runtime d", []string{"docker"}},
		{"berth version --", []string{"--json", "--output"}},
	}
	for _, tt := range tests {
		words := strings.Fields(tt.line)
		if strings.HasSuffix(tt.line, " ") {
			words = append(words, "")
		}
		var quoted []string
		for _, w := range words {
			quoted = append(quoted, shellQuote(w))
		}
		prog := "source " + path + "\nCOMP_WORDS=(" + strings.Join(quoted, " ") + ")\nCOMP_CWORD=" +
			strconv.Itoa(len(words)-1) + "\n_berth\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n"
		out, err := exec.Command(bash, "--norc", "--noprofile", "-c", prog).CombinedOutput()
		if err != nil {
			t.Fatalf("%q: bash: %v\n%s", tt.line, err, out)
		}
		got := strings.Fields(string(out))
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%q completes to %q, want %q", tt.line, got, tt.want)
		}
	}
}

// TestCompletion_Zsh: the zsh script offers every visible command and each
// command's flags (zsh itself checks the syntax where it is installed).
func TestCompletion_Zsh(t *testing.T) {
	code, script, stderr := runCLI(t, "completion", "zsh")
	if code != 0 || !strings.HasPrefix(script, "#compdef berth\n") {
		t.Fatalf("exit %d: %s%s", code, stderr, script)
	}
	if !strings.Contains(script, "'--all[include terminated backends]'") {
		t.Errorf("zsh script lacks ps --all with its help")
	}
	for _, c := range describeCommands(t.Context()) {
		if !strings.Contains(script, "'"+c.name+":") || !strings.Contains(script, "        "+c.name+")\n") {
			t.Errorf("zsh script lacks the command %s", c.name)
		}
		for _, f := range c.flags {
			if !strings.Contains(script, "'"+flagName(f.Name)+"[") {
				t.Errorf("zsh script lacks %s %s", c.name, flagName(f.Name))
			}
		}
	}
	// A real zsh parses it, and its completion system takes it as berth's.
	zsh, err := exec.LookPath("zsh")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("zsh is missing (CI is set, so this fails instead of skipping); install it with: apt-get install -y zsh")
		}
		t.Skip("zsh is missing; install it with: apt-get install -y zsh")
	}
	path := filepath.Join(t.TempDir(), "_berth")
	if err := os.WriteFile(path, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(zsh, "-n", path).CombinedOutput(); err != nil {
		t.Errorf("zsh -n: %v\n%s", err, out)
	}
	load := `autoload -U compinit && compinit -u -D && source "$1" && print -r -- "${_comps[berth]} $(whence -w _berth)"`
	out, err := exec.Command(zsh, "-f", "-c", load, "zsh", path).CombinedOutput()
	if got, want := strings.TrimSpace(string(out)), "_berth _berth: function"; err != nil || got != want {
		t.Errorf("zsh, after compinit and source <(berth completion zsh): %q %v; want %q", got, err, want)
	}
}
