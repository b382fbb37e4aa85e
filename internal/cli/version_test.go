package cli

import (
	"encoding/json"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

func TestVersion(t *testing.T) {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		t.Fatal("test binary has no build information")
	}
	code, out, _ := runCLI(t, "version", "--output", "json")
	var v versionInfo
	if err := json.Unmarshal([]byte(out), &v); err != nil || code != 0 {
		t.Fatalf("exit %d, %v: %q", code, err, out)
	}
	if v.Version != bi.Main.Version || v.GoVersion != runtime.Version() || v.Platform != runtime.GOOS+"/"+runtime.GOARCH {
		t.Errorf("got %+v; want version %q, %s %s/%s", v, bi.Main.Version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	}
	code, out, _ = runCLI(t, "--version")
	if code != 0 || !strings.HasPrefix(out, "berth "+bi.Main.Version+"\n") || !strings.Contains(out, runtime.Version()) {
		t.Errorf("--version: exit %d, output %q", code, out)
	}
}
