package cli

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"
)

func init() {
	register("version", "print the version of this binary", false, runVersion)
}

// versionInfo is what `berth version` reports, from the build information
// the Go toolchain embeds: the module version (a tag for `go install
// …@v1.2.3`, "(devel)" for a build in a checkout) and, when built in a
// Git checkout with VCS stamping on, the commit.
type versionInfo struct {
	Version   string `json:"version"`
	Revision  string `json:"revision,omitempty"`
	Time      string `json:"time,omitempty"`
	Modified  bool   `json:"modified,omitempty"`
	GoVersion string `json:"go_version"`
	Platform  string `json:"platform"`
}

func buildVersion() versionInfo {
	v := versionInfo{Version: "unknown", GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return v
	}
	v.Version = bi.Main.Version
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v.Revision = s.Value
		case "vcs.time":
			v.Time = s.Value
		case "vcs.modified":
			v.Modified = s.Value == "true"
		}
	}
	return v
}

func runVersion(ctx context.Context, args []string, stdio Stdio) error {
	fs := newFlags("version", "berth version [--output text|json]", stdio)
	asJSON := fs.output()
	rest, err := fs.parse(args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usagef("unexpected argument %q", rest[0])
	}
	v := buildVersion()
	if *asJSON {
		return printJSON(stdio.Out, v)
	}
	fmt.Fprintf(stdio.Out, "berth %s\n", v.Version)
	switch {
	case v.Revision == "":
		fmt.Fprintln(stdio.Out, "  commit   unknown (built without VCS information: build in a Git clone with GOFLAGS=-buildvcs=true)")
	case v.Modified:
		fmt.Fprintf(stdio.Out, "  commit   %s, with uncommitted changes (%s)\n", v.Revision, v.Time)
	default:
		fmt.Fprintf(stdio.Out, "  commit   %s (%s)\n", v.Revision, v.Time)
	}
	fmt.Fprintf(stdio.Out, "  go       %s %s\n", v.GoVersion, v.Platform)
	return nil
}
