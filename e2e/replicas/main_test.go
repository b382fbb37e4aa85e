package replicas

import (
	"fmt"
	"os"
	"testing"

	"github.com/berthhq/berth/internal/testbin"
)

var bin testbin.Binaries

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
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
