// Package testbin builds the binaries end-to-end tests run — berth and the
// test backend — the way they ship: static, without cgo or the race
// detector.
package testbin

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// Binaries are the paths Build wrote.
type Binaries struct {
	Berth       string // ./cmd/berth
	TestBackend string // ./internal/testbackend
}

// Build compiles ./cmd/berth and ./internal/testbackend into dir.
func Build(dir string) (Binaries, error) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	out, err := exec.Command(gobin, "env", "GOMOD").Output()
	if err != nil {
		return Binaries{}, fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := string(bytes.TrimSpace(out))
	if mod == "" || mod == os.DevNull {
		return Binaries{}, fmt.Errorf("not inside a Go module")
	}
	cmd := exec.Command(gobin, "build", "-o", dir+string(filepath.Separator), "./cmd/berth", "./internal/testbackend")
	cmd.Dir = filepath.Dir(mod)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return Binaries{}, fmt.Errorf("build berth and testbackend (CGO_ENABLED=0 go build ./cmd/berth ./internal/testbackend): %v\n%s", err, out)
	}
	return Binaries{Berth: filepath.Join(dir, "berth"), TestBackend: filepath.Join(dir, "testbackend")}, nil
}
