package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"testing"

	"github.com/berthhq/berth/api"
	"github.com/berthhq/berth/api/apitest"
	"github.com/berthhq/berth/internal/testbin"
	"github.com/berthhq/berth/runtime/kubernetes/kubetest"
)

// bin holds the binaries TestMain builds once for every test.
var bin struct {
	berth       string // ./cmd/berth, CGO_ENABLED=0 as it ships
	testbackend string // ./internal/testbackend
}

func TestMain(m *testing.M) {
	code := run(m)
	kubetest.StopShared() // the API server some tests started
	os.Exit(code)
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "berth-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	bins, err := testbin.Build(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	bin.berth, bin.testbackend = bins.Berth, bins.TestBackend
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
