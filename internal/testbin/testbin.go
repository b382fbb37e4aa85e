// Package testbin builds the binaries end-to-end tests run — berth and the
// test backend — the way they ship: static, without cgo or the race
// detector.
package testbin

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/berthhq/berth/runtime/process"
)

// Binaries are the paths Build wrote.
type Binaries struct {
	Berth       string // ./cmd/berth
	TestBackend string // ./internal/testbackend
}

// Build compiles ./cmd/berth and ./internal/testbackend into dir.
func Build(dir string) (Binaries, error) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	out, err := exec.Command(gobin, "env", "GOMOD").Output()
	if err != nil {
		return Binaries{}, fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := string(bytes.TrimSpace(out))
	if mod == "" || mod == os.DevNull {
		return Binaries{}, fmt.Errorf("not inside a Go module")
	}
	cmd := exec.Command(gobin, "build", "-o", dir+string(filepath.Separator), "./cmd/berth", "./internal/testbackend")
	cmd.Dir = filepath.Dir(mod)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return Binaries{}, fmt.Errorf("build berth and testbackend (CGO_ENABLED=0 go build ./cmd/berth ./internal/testbackend): %v\n%s", err, out)
	}
	return Binaries{Berth: filepath.Join(dir, "berth"), TestBackend: filepath.Join(dir, "testbackend")}, nil
}

var images struct {
	sync.Mutex
	built map[string]string // by binary path
}

// Image builds a FROM scratch image of the static binary bin, with it as
// the entrypoint, once per binary, tagged prefix:<hash of the binary> so
// that concurrent runs of different trees never share a tag.
func Image(bin, prefix string) (string, error) {
	images.Lock()
	defer images.Unlock()
	if name, ok := images.built[bin]; ok {
		return name, nil
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(data)
	name := prefix + ":" + hex.EncodeToString(sum[:6])
	dir, err := os.MkdirTemp("", "berth-image-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)
	base := filepath.Base(bin)
	if err := os.WriteFile(filepath.Join(dir, base), data, 0o755); err != nil {
		return "", err
	}
	df := fmt.Sprintf("FROM scratch\nCOPY %s /%s\nENTRYPOINT [\"/%s\"]\n", base, base, base)
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(df), 0o644); err != nil {
		return "", err
	}
	if out, err := exec.Command("docker", "build", "-q", "-t", name, dir).CombinedOutput(); err != nil {
		return "", fmt.Errorf("docker build %s: %v\n%s", name, err, out)
	}
	if images.built == nil {
		images.built = map[string]string{}
	}
	images.built[bin] = name
	return name, nil
}

// RemoveImages removes the images Image built; one that containers of
// another run still use stays.
func RemoveImages() {
	images.Lock()
	defer images.Unlock()
	for bin, name := range images.built {
		exec.Command("docker", "rmi", name).Run()
		delete(images.built, bin) // built again if a later test asks
	}
}

// NeedDocker fails the test in CI, and skips it elsewhere, when no Docker
// Engine answers.
func NeedDocker(t testing.TB) {
	t.Helper()
	if out, err := exec.Command("docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		msg := fmt.Sprintf("Docker Engine not reachable (docker info: %v: %s)", err, bytes.TrimSpace(out))
		if os.Getenv("CI") != "" {
			t.Fatalf("%s; CI must have it", msg)
		}
		t.Skipf("%s; install Docker Engine (apt-get install docker.io), start dockerd, and check that `docker info` answers", msg)
	}
}

var given = struct {
	sync.Mutex
	m map[string]bool
}{m: map[string]bool{}}

// FreeAddr returns a loopback address nobody listens on right now, and never
// the same twice in this process: a server must be given concrete ports to
// hand out its URLs, and the kernel may offer a port it just offered
// another parallel test, whose server has not bound it yet.
//
// The port is taken from below the process runtime's backend ports, which
// are below the kernel's ephemeral range: a port from that range can be
// taken by any outgoing connection on the machine (another test package's
// clients) between this check and the server's bind, and one from the
// backend range by a backend another test's Berth starts; either fails
// the server with "address already in use".
func FreeAddr(t testing.TB) string {
	t.Helper()
	addr, err := PickAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// PickAddr is FreeAddr for code without a testing.TB (test clusters,
// package-level helpers).
func PickAddr() (string, error) {
	lo, hi := quietPorts()
	for range 1000 {
		port := 0
		if hi > lo {
			port = lo + mrand.IntN(hi-lo)
		}
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			if port == 0 {
				return "", fmt.Errorf("find a free port: %w", err)
			}
			continue
		}
		addr := ln.Addr().String()
		ln.Close()
		given.Lock()
		seen := given.m[addr]
		given.m[addr] = true
		given.Unlock()
		if !seen {
			return addr, nil
		}
	}
	return "", fmt.Errorf("find a free port: 1000 tries found none")
}

// quietPorts is the range FreeAddr draws from, [lo, hi): up to 10,000
// ports outside both the kernel's ephemeral range and the process
// runtime's backend range (below both where there is room, else above
// both), or none (the kernel chooses) when neither side has 1,000.
func quietPorts() (lo, hi int) {
	bLo, bHi := process.PortRange()
	eLo, eHi := bLo, bHi
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			l, err1 := strconv.Atoi(f[0])
			h, err2 := strconv.Atoi(f[1])
			if err1 == nil && err2 == nil {
				eLo, eHi = l, h
			}
		}
	}
	if below := min(bLo, eLo); below-1024 >= 1000 {
		return max(1024, below-10000), below
	}
	if above := max(bHi, eHi) + 1; 65536-above >= 1000 {
		return above, min(65536, above+10000)
	}
	return 0, 0
}

// CleanEnv is this process's environment without BERTH_* settings, which
// would change how a server or CLI under test behaves.
func CleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "BERTH_") {
			env = append(env, kv)
		}
	}
	return env
}

// SyncBuffer collects a subprocess's output safely.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
