package chaos

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

var (
	flagN = flag.Int("chaos.n", 0, "iterations per runtime (0: each runtime's default, "+
		"which is what CI runs)")
	flagSeed = flag.Uint64("chaos.seed", 0, "seed of the kill moments and key choices (0: a new one, logged)")
	flagKeep = flag.Bool("chaos.keep", false, "keep the directory of each failed iteration (data dir, audit file, berth's output) and log where")
)

// bin holds the binaries TestMain builds once for every test.
var bin struct {
	berth       string // ./cmd/berth, CGO_ENABLED=0 as it ships, without -race
	testbackend string // ./internal/testbackend
}

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "berth-chaos-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if err := build(dir); err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		return 1
	}
	bin.berth = filepath.Join(dir, "berth")
	bin.testbackend = filepath.Join(dir, "testbackend")
	code := m.Run()
	if n := usedInstances.removeAll(); n > 0 {
		fmt.Fprintf(os.Stderr, "chaos: removed %d containers the engine created after their iteration's cleanup\n", n)
	}
	removeImage()
	return code
}

// build compiles the binaries the way they ship: static, no cgo, and never
// with the race detector (that slows only this test binary, not Berth).
func build(dir string) error {
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	root, err := moduleRoot(gobin)
	if err != nil {
		return err
	}
	cmd := exec.Command(gobin, "build", "-o", dir+string(filepath.Separator), "./cmd/berth", "./internal/testbackend")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("build berth and testbackend (CGO_ENABLED=0 go build ./cmd/berth ./internal/testbackend): %v\n%s", err, out)
	}
	return nil
}

func moduleRoot(gobin string) (string, error) {
	out, err := exec.Command(gobin, "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := string(bytes.TrimSpace(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("not inside a Go module")
	}
	return filepath.Dir(mod), nil
}
