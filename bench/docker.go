package bench

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/berthhq/berth"
)

// benchImage is the FROM scratch image of the bench backend.
const benchImage = "berth-bench-backend:latest"

// skipDocker says why the Docker scenario cannot run, or "".
func skipDocker(ctx context.Context, e *env) string {
	switch {
	case !slices.Contains(e.berth.Runtimes, "docker"):
		return "this Berth has no docker runtime (not in this build, or no engine answered)"
	case !e.static:
		return "the backend is not a static binary, so it cannot run FROM scratch (build needs the go command)"
	}
	if _, err := exec.LookPath("docker"); err != nil {
		return "the docker CLI (for the `docker run` baseline) is not installed"
	}
	if err := buildImage(ctx, e.backend[0], benchImage); err != nil {
		return "could not build the image: " + oneLine(err.Error())
	}
	return ""
}

// dockerSocket is the Engine's unix socket, from DOCKER_HOST or the default.
func dockerSocket() string {
	if h, ok := strings.CutPrefix(os.Getenv("DOCKER_HOST"), "unix://"); ok {
		return h
	}
	return "/var/run/docker.sock"
}

// buildImage builds tag FROM scratch holding the binary as /backend,
// through the Engine API (POST /build with a tar context).
func buildImage(ctx context.Context, binary, tag string) error {
	bin, err := os.ReadFile(binary)
	if err != nil {
		return err
	}
	var ctxTar bytes.Buffer
	tw := tar.NewWriter(&ctxTar)
	dockerfile := []byte("FROM scratch\nCOPY backend /backend\nENV PORT=8080\nEXPOSE 8080\nENTRYPOINT [\"/backend\"]\n")
	for _, f := range []struct {
		name string
		mode int64
		data []byte
	}{{"Dockerfile", 0o644, dockerfile}, {"backend", 0o755, bin}} {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: f.mode, Size: int64(len(f.data)), ModTime: time.Unix(0, 0)}); err != nil {
			return err
		}
		if _, err := tw.Write(f.data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	sock := dockerSocket()
	hc := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
	bctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(bctx, http.MethodPost, "http://docker/build?rm=1&forcerm=1&t="+tag, &ctxTar)
	req.Header.Set("Content-Type", "application/x-tar")
	res, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("docker build: %w", err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(res.Body, 4096))
		return fmt.Errorf("docker build: %s: %s", res.Status, msg)
	}
	// The answer is a stream of JSON messages; a failed step says "error".
	dec := json.NewDecoder(res.Body)
	for {
		var m struct {
			Error string `json:"error"`
		}
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return fmt.Errorf("docker build: %w", err)
		}
		if m.Error != "" {
			return fmt.Errorf("docker build: %s", m.Error)
		}
	}
}

// coldDockerRun is the baseline: `docker run -d` of the image with the port
// published on loopback, polled until it answers 200; then removed.
func (e *env) coldDockerRun(ctx context.Context) (time.Duration, error) {
	port, err := freePort()
	if err != nil {
		return 0, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	start := time.Now()
	out, err := exec.CommandContext(ctx, "docker", "run", "-d", "-e", "PORT=8080", "-p", addr+":8080", benchImage).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("%w: %s", err, ee.Stderr)
		}
		return 0, fmt.Errorf("docker run: %w", err)
	}
	err = pollUntil200(ctx, addr, "/", 60*time.Second, nil)
	d := time.Since(start)
	id := strings.TrimSpace(string(out))
	if rerr := exec.Command("docker", "rm", "-f", id).Run(); err == nil && rerr != nil {
		err = fmt.Errorf("docker rm: %w", rerr)
	}
	return d, err
}

// dockerQuiet waits, up to 10 s, until Berth's docker runtime is not
// creating a network sandbox: refilling its pool in the background would
// load the engine during the next sample, either side's. Each sample thus
// starts with the pool full, the steady state of starts less frequent than
// one per refill (about 0.2 s here).
func (e *env) dockerQuiet(ctx context.Context) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.berth.API+"/metrics", nil)
		if err != nil {
			return err
		}
		if e.berth.apiKey != "" {
			req.Header.Set("Authorization", "Bearer "+e.berth.apiKey)
		}
		res, err := e.hc.Do(req)
		if err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
		body, err := io.ReadAll(res.Body)
		res.Body.Close()
		if err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
		if !strings.Contains(string(body), "\nberth_docker_sandboxes_creating 1") {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("Berth's docker runtime was still creating network sandboxes after 10 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func runColdDocker(ctx context.Context, e *env, r *runCtx) (*result, error) {
	n, warm := size(&e.cfg, 10, 2), size(&e.cfg, 2, 1)
	grace, idle := 1, 60
	spawn := &berth.SpawnConfig{Image: benchImage, PullPolicy: "never", GraceSeconds: &grace, MaxIdleSeconds: &idle}
	var ph phases
	b, x, err := coldPair(ctx, n, warm,
		func(i int) (time.Duration, error) {
			p := &ph
			if i < warm {
				p = nil
			}
			if err := e.dockerQuiet(ctx); err != nil {
				return 0, err
			}
			return e.coldBerth(ctx, fmt.Sprintf("docker-%d-%d", r.n, i), spawn, p)
		},
		func(int) (time.Duration, error) {
			if err := e.dockerQuiet(ctx); err != nil {
				return 0, err
			}
			return e.coldDockerRun(ctx)
		})
	if err != nil {
		return nil, err
	}
	return coldResult("connect → ready, Docker, p50", b, x, &ph), nil
}
