package pools

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"sync"
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
	dir, err := os.MkdirTemp("", "berth-pools-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "pools:", err)
		os.Exit(1)
	}
	bin, err = testbin.Build(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "pools:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	if openAPI, err = apitest.Load(context.Background(), api.OpenAPI); err != nil {
		fmt.Fprintln(os.Stderr, "pools:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	// Every control API answer is checked against the OpenAPI document; a
	// mismatch fails the test whose server gave it.
	http.DefaultTransport = &apitest.Transport{Base: http.DefaultTransport, Doc: openAPI, For: func(req *http.Request) func(error) {
		servers.Lock()
		defer servers.Unlock()
		if s := servers.m[req.URL.Host]; s != nil {
			return s.mismatch
		}
		return nil
	}}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var servers = struct {
	sync.Mutex
	m map[string]*server
}{m: map[string]*server{}}
