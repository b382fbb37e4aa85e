package replicas

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"testing"

	"github.com/berthhq/berth/api"
	"github.com/berthhq/berth/api/apitest"
	"github.com/berthhq/berth/internal/testbin"
)

var (
	bin     testbin.Binaries
	openAPI *apitest.Doc
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "berth-replicas-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "replicas:", err)
		os.Exit(1)
	}
	bin, err = testbin.Build(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "replicas:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	if openAPI, err = apitest.Load(context.Background(), api.OpenAPI); err != nil {
		fmt.Fprintln(os.Stderr, "replicas:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	// Every control API answer a test gets through Go's default transport
	// is checked against the OpenAPI document; a mismatch fails the test
	// that started that replica.
	http.DefaultTransport = &apitest.Transport{Base: http.DefaultTransport, Doc: openAPI, For: func(req *http.Request) func(error) {
		if nd := nodeAt(req.URL.Host); nd != nil {
			return nd.mismatch
		}
		return nil
	}}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
