package cli

import (
	"context"
	"debug/elf"
	"fmt"
	"os"

	"github.com/berthhq/berth/runtime/docker"
)

func init() {
	register("demo-image", "build the demo backend as a container image (FROM scratch, no registry)", false, runDemoImage)
}

const demoImageUsage = "berth demo-image [--tag IMAGE]"

// runDemoImage makes an image holding only this binary, running its demo
// notepad as a non-root user: a container backend that works on a machine
// that can pull nothing.
func runDemoImage(ctx context.Context, args []string, stdio Stdio) error {
	fs := newFlags("demo-image", demoImageUsage, stdio)
	tag := fs.String("tag", "berth-demo:latest", "the `image` name to give it")
	rest, err := fs.parse(args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usagef("unexpected argument %q; usage: %s", rest[0], demoImageUsage)
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find this binary: %w", err)
	}
	if err := checkStatic(exe); err != nil {
		return err
	}
	bin, err := os.ReadFile(exe)
	if err != nil {
		return err
	}
	err = docker.ImportImage(ctx, "", *tag, []docker.ImageFile{{Name: "berth", Data: bin}}, []string{
		`ENTRYPOINT ["/berth", "demo-backend"]`,
		"USER 65534:65534",
		"EXPOSE 8080",
	}, "Berth demo notepad backend")
	if err != nil {
		return fmt.Errorf("%w (is Docker running? berth demo-image talks to $DOCKER_HOST or /var/run/docker.sock)", err)
	}
	fmt.Fprintf(stdio.Out, `Built %s: the demo notepad, FROM scratch, as user 65534. With berth dev running:

  curl -s -X POST %s/v1/connect -d '{"key":"doc-7","wait":true,
    "spawn":{"image":"%s","pull_policy":"never","state":{"mode":"blob"}}}'

then open the "url" it returns.
`, *tag, defaultAPI, *tag)
	return nil
}

// checkStatic refuses a dynamically linked binary: an image FROM scratch
// has no C library for it to load.
func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("read this binary: %w", err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("this berth is linked dynamically (built with cgo), and an image FROM scratch has no C library: build a static one with\n  CGO_ENABLED=0 go build -o berth ./cmd/berth && ./berth demo-image")
		}
	}
	return nil
}
