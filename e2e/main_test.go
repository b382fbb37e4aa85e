package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/berthhq/berth/api"
	"github.com/berthhq/berth/api/apitest"
)

// bin holds the binaries TestMain builds once for every test.
var bin struct {
	berth       string // ./cmd/berth, CGO_ENABLED=0 as it ships
	testbackend string // ./internal/testbackend
}

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "berth-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if err := build(dir); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	bin.berth = filepath.Join(dir, "berth")
	bin.testbackend = filepath.Join(dir, "testbackend")
	if openAPI, err = apitest.Load(context.Background(), api.OpenAPI); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	// Every answer a test gets from a control API through Go's default
	// client or transport (api.Client, http.Get, …) is checked against the
	// OpenAPI document; mismatches fail the test that started that Berth.
	http.DefaultTransport = checked(http.DefaultTransport)
	return m.Run()
}

// build compiles the binaries the way they ship: static, no cgo.
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
