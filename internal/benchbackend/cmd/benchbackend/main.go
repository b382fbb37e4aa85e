// Command benchbackend is the backend `berth bench` spawns: see package
// benchbackend. Build it with CGO_ENABLED=0 so it also runs FROM scratch.
package main

import (
	"fmt"
	"os"

	"github.com/berthhq/berth/internal/benchbackend"
)

func main() {
	if err := benchbackend.Main(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
