package docker

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/jsonstream"
	"github.com/moby/moby/client"

	"github.com/berthhq/berth/runtime/runtimetest"
)

// Images the tests build, FROM scratch, around internal/testbackend. Each
// also gets a name under an unreachable registry, so a pull of it fails at
// once, with or without internet access.
const (
	testImage     = "berth-testbackend:test"
	testImageUser = "berth-testbackend:test-user" // USER 1000:1000, STOPSIGNAL SIGINT
	noRegistry    = "127.0.0.1:1/"
)

// Every runtime of this run has an instance starting with testInstance,
// its own unless a test says otherwise, and uses testNetwork, so concurrent
// runs do not meet (nor runtimes within one, which would take each other's
// network sandboxes for orphans); TestMain checks that no container is left
// behind.
var (
	testInstance = "test-" + strconv.Itoa(os.Getpid())
	testNetwork  = "berth-test-" + strconv.Itoa(os.Getpid())
	engineUp     bool
)

func TestMain(m *testing.M) {
	engineUp = Available(context.Background(), "")
	if engineUp {
		// Create the network before tests race to (see TestNew_networkRace).
		r, err := New(context.Background(), Config{Network: testNetwork, Instance: testInstance, Sandboxes: -1})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		r.Close()
	}
	code := m.Run()
	if engineUp && !cleanEngine() {
		code = 1
	}
	os.Exit(code)
}

// cleanEngine removes what this run left on the engine and reports whether
// no container was left behind.
func cleanEngine() bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cli, err := client.New(client.FromEnv)
	if err != nil {
		fmt.Fprintln(os.Stderr, "leak check:", err)
		return false
	}
	defer cli.Close()
	res, err := cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: make(client.Filters).Add("label", LabelInstance)})
	if err != nil {
		fmt.Fprintln(os.Stderr, "leak check:", err)
		return false
	}
	res.Items = slices.DeleteFunc(res.Items, func(c container.Summary) bool {
		return !strings.HasPrefix(c.Labels[LabelInstance], testInstance)
	})
	for _, c := range res.Items {
		fmt.Fprintf(os.Stderr, "LEAK: container %s (%v, backend %s, %s) was left behind\n", c.ID[:12], c.Names, c.Labels[LabelBackend], c.State)
		cli.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true})
	}
	nets, err := cli.NetworkList(ctx, client.NetworkListOptions{Filters: make(client.Filters).Add("name", testNetwork)})
	if err != nil {
		fmt.Fprintln(os.Stderr, "remove the test network:", err)
	}
	for _, n := range nets.Items {
		if _, err := cli.NetworkRemove(ctx, n.ID, client.NetworkRemoveOptions{}); err != nil && !cerrdefs.IsNotFound(err) {
			fmt.Fprintln(os.Stderr, "remove the test network:", err)
		}
	}
	return len(res.Items) == 0
}

// needEngine skips the test without an engine, or fails it in CI.
func needEngine(t testing.TB) {
	t.Helper()
	if engineUp {
		return
	}
	msg := "no Docker Engine answers at $DOCKER_HOST or /var/run/docker.sock; start one (e.g. `sudo systemctl start docker`) and make its socket readable to run these tests"
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// newRuntime returns a runtime on the test network and instance, closed when
// the test ends; cfg's zero fields get those.
func newRuntime(t testing.TB, cfg Config) *Runtime {
	t.Helper()
	needEngine(t)
	buildImages(t)
	if cfg.Network == "" {
		cfg.Network = testNetwork
	}
	if cfg.Instance == "" {
		cfg.Instance = testInstance + "-" + strings.ToLower(rand.Text()[:8])
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(t.Output(), nil))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

var images struct {
	once sync.Once
	err  error
}

// buildImages builds the test images once per test binary.
func buildImages(t testing.TB) {
	t.Helper()
	bin := runtimetest.BuildTestBackend(t)
	images.once.Do(func() { images.err = build(bin) })
	if images.err != nil {
		t.Fatal(images.err)
	}
}

func build(bin string) error {
	exe, err := os.ReadFile(bin)
	if err != nil {
		return err
	}
	cli, err := client.New(client.FromEnv)
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	builds := []struct {
		tag, dockerfile string
	}{
		{testImage, "FROM scratch\nCOPY testbackend /testbackend\nENTRYPOINT [\"/testbackend\"]\n"},
		{testImageUser, "FROM " + testImage + "\nUSER 1000:1000\nSTOPSIGNAL SIGINT\n"},
	}
	for _, b := range builds {
		ctxTar, err := tarball(map[string][]byte{"Dockerfile": []byte(b.dockerfile), "testbackend": exe})
		if err != nil {
			return err
		}
		res, err := cli.ImageBuild(ctx, ctxTar, client.ImageBuildOptions{Tags: []string{b.tag, noRegistry + b.tag}, Remove: true, ForceRemove: true})
		if err != nil {
			return fmt.Errorf("build %s: %w", b.tag, err)
		}
		err = buildOutput(res.Body)
		res.Body.Close()
		if err != nil {
			return fmt.Errorf("build %s: %w", b.tag, err)
		}
	}
	return nil
}

// buildOutput reads the engine's build messages and returns the error they
// report, with the output before it.
func buildOutput(r io.Reader) error {
	var out strings.Builder
	dec := json.NewDecoder(r)
	for {
		var m jsonstream.Message
		if err := dec.Decode(&m); err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
		if m.Error != nil {
			return fmt.Errorf("%s\n%s", m.Error.Message, out.String())
		}
		out.WriteString(m.Stream)
	}
}

// tarball is a build context holding files, all executable.
func tarball(files map[string][]byte) (*bytes.Buffer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for name, data := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o755, Size: int64(len(data))}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	return &buf, tw.Close()
}
