package chaos

import (
	"flag"
	"fmt"
	"os"
	"testing"

	"github.com/berthhq/berth/internal/testbin"
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
	bins, err := testbin.Build(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		return 1
	}
	bin.berth, bin.testbackend = bins.Berth, bins.TestBackend
	code := m.Run()
	if n := usedInstances.removeAll(); n > 0 {
		fmt.Fprintf(os.Stderr, "chaos: removed %d containers the engine created after their iteration's cleanup\n", n)
	}
	testbin.RemoveImages()
	return code
}
