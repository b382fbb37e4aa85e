package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
)

func init() {
	register("completion", "print a shell completion script: bash or zsh", false, runCompletion)
}

const completionUsage = `berth completion bash|zsh

Load it in the running shell:
  source <(berth completion bash)      # bash; or save it in /etc/bash_completion.d/berth
  source <(berth completion zsh)       # zsh; or save it as _berth in a directory of $fpath`

func runCompletion(ctx context.Context, args []string, stdio Stdio) error {
	fs := newFlags("completion", completionUsage, stdio)
	rest, err := fs.parse(args)
	if err != nil {
		return err
	}
	if len(rest) != 1 {
		return usagef("which shell? usage: %s", completionUsage)
	}
	cmds := describeCommands(ctx)
	switch rest[0] {
	case "bash":
		writeBash(stdio.Out, cmds)
	case "zsh":
		writeZsh(stdio.Out, cmds)
	default:
		return usagef("no completion for %q; use bash or zsh", rest[0])
	}
	return nil
}

// flagCollector is a standard output that keeps the flag set a command
// shows for -h: how completion learns every command's flags from the
// command itself, without running it.
type flagCollector struct {
	io.Writer
	fs []*flags
}

func (c *flagCollector) add(f *flags) { c.fs = append(c.fs, f) }

// commandInfo is what completion offers for one command.
type commandInfo struct {
	name, summary string
	flags         []*flag.Flag
}

// describeCommands asks each visible command for its flags with -h.
func describeCommands(ctx context.Context) []commandInfo {
	var out []commandInfo
	for _, name := range visibleCommands() {
		args := []string{"-h"}
		if name == "state" {
			args = []string{"ls", "-h"} // its verbs share one set of flags
		}
		c := &flagCollector{Writer: io.Discard}
		commands[name].run(ctx, args, Stdio{In: strings.NewReader(""), Out: c, Err: io.Discard})
		info := commandInfo{name: name, summary: commands[name].summary}
		for _, f := range c.fs {
			f.VisitAll(func(fl *flag.Flag) { info.flags = append(info.flags, fl) })
		}
		out = append(out, info)
	}
	return out
}

// flagValues are the values completion offers after a flag, by its name.
var flagValues = map[string][]string{
	"output":     {"text", "json"},
	"state":      {"scheduled", "starting", "ready", "terminating", "terminated"},
	"state-mode": {"none", "blob", "dir", "volume"},
	// serve's --runtime and connect's share the name; auto is serve's only.
	"runtime":   {"auto", "process", "docker", "kubernetes"},
	"log-level": {"debug", "info", "warn", "error"},
}

// fileFlags take a file or directory.
var fileFlags = []string{"o", "data-dir", "volume-root", "cgroup-dir", "profile", "backend"}

// idCommands take a backend id, which completion asks `berth ps -q` for.
var idCommands = []string{"get", "inspect", "logs", "events", "terminate"}

func isBool(f *flag.Flag) bool {
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

func writeBash(w io.Writer, cmds []commandInfo) {
	var names []string
	for _, c := range cmds {
		names = append(names, c.name)
	}
	fmt.Fprintf(w, `# bash completion for berth (berth completion bash). Load it with
#   source <(berth completion bash)
_berth() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
    COMPREPLY=()
    if [[ $COMP_CWORD -eq 1 ]]; then
        COMPREPLY=($(compgen -W %q -- "$cur"))
        return
    fi
    local cmd=${COMP_WORDS[1]} flags="" valued="" i
    for ((i = 2; i < COMP_CWORD; i++)); do
        if [[ ${COMP_WORDS[i]} == -- ]]; then
            # the backend's command line
            if [[ $i -eq $((COMP_CWORD - 1)) ]]; then
                COMPREPLY=($(compgen -c -- "$cur"))
            else
                COMPREPLY=($(compgen -f -- "$cur"))
            fi
            return
        fi
    done
    case $cmd in
`, strings.Join(names, " "))
	for _, c := range cmds {
		var all, valued []string
		for _, f := range c.flags {
			all = append(all, flagName(f.Name))
			if !isBool(f) {
				valued = append(valued, flagName(f.Name))
			}
		}
		fmt.Fprintf(w, "        %s) flags=%q valued=%q ;;\n", c.name, strings.Join(all, " "), strings.Join(valued, " "))
	}
	fmt.Fprint(w, `    esac
    if [[ " $valued " == *" $prev "* ]]; then
        case ${prev#${prev%%[!-]*}} in
`)
	for _, name := range sortedKeys(flagValues) {
		fmt.Fprintf(w, "            %s) COMPREPLY=($(compgen -W %q -- \"$cur\")) ;;\n", name, strings.Join(flagValues[name], " "))
	}
	fmt.Fprintf(w, `            %s) COMPREPLY=($(compgen -f -- "$cur")) ;;
        esac
        return
    fi
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$flags" -- "$cur"))
        return
    fi
    case $cmd in
        %s) COMPREPLY=($(compgen -W "$(berth ps -q 2>/dev/null)" -- "$cur")) ;;
        state) [[ $COMP_CWORD -eq 2 ]] && COMPREPLY=($(compgen -W "ls get restore" -- "$cur")) ;;
        completion) COMPREPLY=($(compgen -W "bash zsh" -- "$cur")) ;;
    esac
}
complete -F _berth berth
`, strings.Join(fileFlags, "|"), strings.Join(idCommands, "|"))
}

func writeZsh(w io.Writer, cmds []commandInfo) {
	fmt.Fprint(w, `#compdef berth
# zsh completion for berth (berth completion zsh). Load it with
#   source <(berth completion zsh)
# or save it as _berth in a directory of $fpath.
_berth_ids() {
    local -a ids
    ids=(${(f)"$(berth ps -q 2>/dev/null)"})
    _describe -t ids 'backend' ids
}
_berth() {
    local -a commands
    commands=(
`)
	for _, c := range cmds {
		fmt.Fprintf(w, "        %s\n", zshQuote(c.name+":"+c.summary))
	}
	fmt.Fprint(w, `    )
    if (( CURRENT == 2 )); then
        _describe -t commands 'berth command' commands
        return
    fi
    local cmd=$words[2]
    shift words
    (( CURRENT-- ))
    case $cmd in
`)
	for _, c := range cmds {
		fmt.Fprintf(w, "        %s)\n            _arguments \\\n", c.name)
		for _, f := range c.flags {
			fmt.Fprintf(w, "                %s \\\n", zshQuote(zshFlagSpec(f)))
		}
		switch {
		case slices.Contains(idCommands, c.name):
			fmt.Fprint(w, "                '1:backend:_berth_ids'\n")
		case c.name == "state":
			fmt.Fprint(w, "                '1:verb:(ls get restore)' '2:key:'\n")
		case c.name == "completion":
			fmt.Fprint(w, "                '1:shell:(bash zsh)'\n")
		case c.name == "connect":
			fmt.Fprint(w, "                '1:key:' '*::backend command:_normal'\n")
		default:
			fmt.Fprint(w, "                '*: :'\n")
		}
		fmt.Fprint(w, "            ;;\n")
	}
	fmt.Fprint(w, `    esac
}
if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
    _berth "$@"
else
    compdef _berth berth
fi
`)
}

// zshFlagSpec is one flag for _arguments: name[help]:value:completer.
func zshFlagSpec(f *flag.Flag) string {
	arg, help := flag.UnquoteUsage(f)
	help = strings.NewReplacer("[", "(", "]", ")", "\n", " ").Replace(help)
	spec := flagName(f.Name) + "[" + help + "]"
	if isBool(f) {
		return spec
	}
	if arg == "" {
		arg = "value"
	}
	switch {
	case flagValues[f.Name] != nil:
		return spec + ":" + arg + ":(" + strings.Join(flagValues[f.Name], " ") + ")"
	case slices.Contains(fileFlags, f.Name):
		return spec + ":" + arg + ":_files"
	}
	return spec + ":" + arg + ":"
}

// zshQuote single-quotes s for zsh.
func zshQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
