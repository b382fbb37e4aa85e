package runtimetest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// TestBackendPackage is the import path of the backend the suite runs.
const TestBackendPackage = "github.com/berthhq/berth/internal/testbackend"

var build struct {
	once sync.Once
	path string
	err  error
}

// BuildTestBackend builds internal/testbackend as a static binary
// (CGO_ENABLED=0, so it also runs in a FROM scratch image) once per test
// binary and returns its path. The binary is replaced, not removed, by later
// runs: $TMPDIR/berth-testbackend/testbackend.
func BuildTestBackend(t testing.TB) string {
	t.Helper()
	build.once.Do(func() { build.path, build.err = buildTestBackend() })
	if build.err != nil {
		t.Fatal(build.err)
	}
	return build.path
}

func buildTestBackend() (string, error) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("build testbackend: the go command is not on PATH: %w", err)
	}
	dir := filepath.Join(os.TempDir(), "berth-testbackend")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	// Test binaries of several packages build at once; each writes its own
	// file and renames it into place, which is atomic.
	tmp := filepath.Join(dir, fmt.Sprintf("testbackend.%d", os.Getpid()))
	cmd := exec.Command(gobin, "build", "-buildvcs=false", "-o", tmp, TestBackendPackage)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build testbackend: %v\n%s", err, out)
	}
	path := filepath.Join(dir, "testbackend")
	if err := os.Rename(tmp, path); err != nil {
		return "", err
	}
	return path, nil
}
