package freeze

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

// servers are the running Berths by control API host:port, so each
// answer's mismatch with the OpenAPI document fails the test that started
// that Berth.
var servers = struct {
	sync.Mutex
	m map[string]*server
}{m: map[string]*server{}}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "berth-freeze-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "freeze:", err)
		os.Exit(1)
	}
	bin, err = testbin.Build(dir)
	if err == nil {
		openAPI, err = apitest.Load(context.Background(), api.OpenAPI)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "freeze:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	http.DefaultTransport = &apitest.Transport{Base: http.DefaultTransport, Doc: openAPI, For: func(req *http.Request) func(error) {
		servers.Lock()
		defer servers.Unlock()
		if s := servers.m[req.URL.Host]; s != nil {
			return s.mismatch
		}
		return nil
	}}
	code := m.Run()
	testbin.RemoveImages()
	os.RemoveAll(dir)
	os.Exit(code)
}
