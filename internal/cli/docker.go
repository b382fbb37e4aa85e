package cli

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/berthhq/berth/runtime"
	"github.com/berthhq/berth/runtime/docker"
)

// openDocker connects the docker runtime when an engine answers. Its
// instance label is derived from the data dir, so two Berths on one engine
// never remove each other's containers.
func openDocker(ctx context.Context, o *serverOptions, log *slog.Logger) (runtime.Runtime, error) {
	instance, err := dockerInstance(o)
	if err != nil {
		return nil, err
	}
	return docker.New(ctx, docker.Config{
		Instance: instance,
		// berth dev leaves nothing behind; servers sharing an engine leave
		// the network to each other.
		RemoveNetwork: o.dev,
		Network:       o.DockerNetwork,
		Logger:        log.With("runtime", "docker"),
	})
}

// dockerInstance names the docker runtime's instance after the data dir.
func dockerInstance(o *serverOptions) (string, error) {
	abs, err := filepath.Abs(o.DataDir)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256([]byte(abs))
	return "berth-" + hex.EncodeToString(sum[:6]), nil
}

// dockerBackendAPI serves the backend API on the docker network's gateway,
// the one host address containers reach; the control API stays on its own
// (loopback) address, out of their reach. It returns the URL backends use.
func dockerBackendAPI(rts map[string]runtime.Runtime, port int, h http.Handler, errC chan<- error) (string, *http.Server, error) {
	d, ok := rts["docker"].(*docker.Runtime)
	if !ok || !d.Gateway().IsValid() {
		return "", nil, nil
	}
	addr := net.JoinHostPort(d.Gateway().String(), strconv.Itoa(port))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: h}
	go func() { errC <- srv.Serve(ln) }()
	return "http://" + addr, srv, nil
}

// registerDockerMetrics exports the docker runtime's sandbox pool, if
// there is a docker runtime.
func registerDockerMetrics(reg prometheus.Registerer, rts map[string]runtime.Runtime) {
	d, ok := rts["docker"].(*docker.Runtime)
	if !ok {
		return
	}
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "berth_docker_sandboxes_ready",
			Help: "Network sandboxes ready for Docker backends to join.",
		}, func() float64 { return float64(d.Sandboxes().Ready) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "berth_docker_sandboxes_creating",
			Help: "1 while the docker runtime creates a network sandbox, else 0.",
		}, func() float64 {
			if d.Sandboxes().Creating {
				return 1
			}
			return 0
		}),
	)
}
