// Package deploy_test checks the ways to deploy Berth that the repository
// ships (the Dockerfile, deploy/systemd, docker-compose.yml) with the real
// tools: Docker Engine, systemd-analyze, Docker Compose.
package deploy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// need finds a tool a test uses; a missing one fails in CI and skips
// elsewhere, saying how to get it.
func need(t *testing.T, tool, install string) string {
	t.Helper()
	path, err := exec.LookPath(tool)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s not found; CI must have it (%s)", tool, install)
		}
		t.Skipf("%s not found; %s to run this test", tool, install)
	}
	return path
}

func run(t *testing.T, dir string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func root(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestDockerfile runs the build line the Dockerfile documents, then the
// image: `berth version`, its user, and `berth serve` answering /healthz.
func TestDockerfile(t *testing.T) {
	need(t, "docker", "install Docker Engine and start dockerd")
	if err := exec.Command("docker", "info").Run(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("Docker Engine not reachable (%v); CI must have it", err)
		}
		t.Skipf("Docker Engine not reachable (%v); start dockerd to run this test", err)
	}
	repo := root(t)
	df, err := os.ReadFile(filepath.Join(repo, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var line string
	for _, l := range strings.Split(string(df), "\n") {
		if s, ok := strings.CutPrefix(l, "#   CGO_ENABLED=0 "); ok {
			line = "CGO_ENABLED=0 " + s
		}
	}
	if line == "" || !strings.Contains(line, "docker build -t berth ") {
		t.Fatalf("the Dockerfile documents no build line (# CGO_ENABLED=0 … docker build -t berth …): %q", line)
	}
	// The documented line, building into a directory and a tag of the test's.
	dist := t.TempDir()
	tag := fmt.Sprintf("berth-deploy-test:%d", time.Now().UnixNano())
	line = strings.ReplaceAll(line, "dist", dist)
	line = strings.Replace(line, "-t berth ", "-t "+tag+" ", 1)
	run(t, repo, "bash", "-euc", line)
	t.Cleanup(func() { exec.Command("docker", "rmi", "-f", tag).Run() })

	if out, err := exec.Command("file", filepath.Join(dist, "berth")).Output(); err == nil && !strings.Contains(string(out), "statically linked") {
		t.Errorf("the binary is not static: %s", out)
	}
	var v struct {
		Version   string `json:"version"`
		GoVersion string `json:"go_version"`
		Platform  string `json:"platform"`
	}
	out := run(t, repo, "docker", "run", "--rm", tag, "version", "--output", "json")
	if err := json.Unmarshal([]byte(out), &v); err != nil || v.Version == "" {
		t.Fatalf("berth version in the image: %q, %v", out, err)
	}
	if v.GoVersion != runtime.Version() || v.Platform != runtime.GOOS+"/"+runtime.GOARCH {
		t.Errorf("berth version in the image: %+v; want %s %s/%s", v, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	}
	if user := strings.TrimSpace(run(t, repo, "docker", "image", "inspect", "-f", "{{.Config.User}}", tag)); user == "" || strings.HasPrefix(user, "0") || strings.HasPrefix(user, "root") {
		t.Errorf("image user %q, want a non-root one", user)
	}

	// Serve, with its records in the image's /data.
	const key = "deploy-test-key"
	id := strings.TrimSpace(run(t, repo, "docker", "run", "-d", "-e", "BERTH_API_KEY="+key, "-p", "127.0.0.1::7070", tag))
	t.Cleanup(func() {
		if t.Failed() {
			logs, _ := exec.Command("docker", "logs", id).CombinedOutput()
			t.Logf("berth serve in the container:\n%s", logs)
		}
		exec.Command("docker", "rm", "-f", id).Run()
	})
	addr := strings.TrimSpace(strings.Split(run(t, repo, "docker", "port", id, "7070/tcp"), "\n")[0])
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/healthz", nil)
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("berth serve in the container did not answer /healthz within 30s (last: %v)", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestSystemdUnit: systemd accepts the unit, and its sandbox leaves an
// exposure of at most 2.0 (of 10) by systemd-analyze's measure.
func TestSystemdUnit(t *testing.T) {
	analyze := need(t, "systemd-analyze", "install systemd")
	repo := root(t)
	unit, err := os.ReadFile(filepath.Join(repo, "deploy", "systemd", "berth.service"))
	if err != nil {
		t.Fatal(err)
	}
	// verify checks that ExecStart exists: point it at a real berth.
	dir := t.TempDir()
	bin := filepath.Join(dir, "berth")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/berth")
	cmd.Dir, cmd.Env = repo, append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	if !bytes.Contains(unit, []byte("ExecStart=/usr/local/bin/berth serve\n")) {
		t.Fatal("the unit's ExecStart is not /usr/local/bin/berth serve")
	}
	path := filepath.Join(dir, "berth.service")
	if err := os.WriteFile(path, bytes.ReplaceAll(unit, []byte("/usr/local/bin/berth"), []byte(bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out := run(t, dir, analyze, "verify", path); strings.TrimSpace(out) != "" {
		t.Errorf("systemd-analyze verify: %s", out)
	}
	cmd = exec.Command(analyze, "security", "--offline=true", "--threshold=20", path)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("systemd-analyze security: exposure above 2.0 (%v):\n%s", err, out)
	}
}

// TestCompose: Docker Compose accepts docker-compose.yml, refuses it
// without an API key, and it wires berth to PostgreSQL and S3.
func TestCompose(t *testing.T) {
	var compose []string
	if exec.Command("docker", "compose", "version").Run() == nil {
		compose = []string{"docker", "compose"}
	} else {
		compose = []string{need(t, "docker-compose", "install Docker Compose (Debian: apt-get install docker-compose)")}
	}
	repo := root(t)
	config := func(env ...string) (string, error) {
		cmd := exec.Command(compose[0], append(compose[1:], "-f", "docker-compose.yml", "config")...)
		cmd.Dir = repo
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "BERTH_") {
				cmd.Env = append(cmd.Env, kv)
			}
		}
		cmd.Env = append(cmd.Env, env...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := config("BERTH_API_KEY=compose-test")
	if err != nil {
		t.Fatalf("compose config: %v\n%s", err, out)
	}
	for _, want := range []string{"BERTH_STORE: postgres://", "BERTH_BLOBS: s3://", "BERTH_API_KEY: compose-test", "service_healthy", "127.0.0.1"} {
		if !strings.Contains(out, want) {
			t.Errorf("compose config lacks %q:\n%s", want, out)
		}
	}
	if out, err := config(); err == nil || !strings.Contains(out, "BERTH_API_KEY") {
		t.Errorf("compose config without BERTH_API_KEY: %v %s; want a refusal naming it", err, out)
	}
}
