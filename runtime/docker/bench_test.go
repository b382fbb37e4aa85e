package docker

import (
	"context"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
)

// BenchmarkStartReady measures Start until the backend's first HTTP 200,
// side by side with a bare "docker run" of the same image through the same
// client (create, start, inspect for the address, same network, no limits
// or hardening), and reports both and their ratio. Removing the containers
// is not timed, nor is the refill of the network sandbox pool, which is
// waited out before each side's start so that it does not load the engine
// during either.
func BenchmarkStartReady(b *testing.B) {
	r := newRuntime(b, Config{})
	ctx := context.Background()
	var berthTime, bareTime time.Duration
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		waitPool(b, r, defaultSandboxes)
		b.StartTimer()
		began := time.Now()
		spec := testSpec(testID(), nil)
		h, err := r.Start(ctx, spec)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { r.Cleanup(context.Background(), h) }) // if we fail below
		firstOK(b, h.Addr)
		berthTime += time.Since(began)

		b.StopTimer()
		waitPool(b, r, defaultSandboxes)
		b.StartTimer()
		began = time.Now()
		addr, cid := bareRun(b, r)
		firstOK(b, addr)
		bareTime += time.Since(began)

		b.StopTimer()
		if err := r.Stop(ctx, h, "", 0); err != nil {
			b.Fatal(err)
		}
		if err := r.Cleanup(ctx, h); err != nil {
			b.Fatal(err)
		}
		r.removeContainer(cid)
		b.StartTimer()
	}
	n := float64(b.N)
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(berthTime.Milliseconds())/n, "berth-ms/op")
	b.ReportMetric(float64(bareTime.Milliseconds())/n, "bare-ms/op")
	b.ReportMetric(float64(berthTime)/float64(bareTime), "berth/bare")
}

// bareRun starts the test image as plainly as the engine allows and returns
// its address and container id.
func bareRun(b *testing.B, r *Runtime) (addr, cid string) {
	ctx := context.Background()
	created, err := r.cli.ContainerCreate(ctx, client.ContainerCreateOptions{
		Config: &container.Config{Image: testImage, Env: []string{"PORT=" + strconv.Itoa(defaultPort)},
			Labels: map[string]string{LabelInstance: testInstance}},
		HostConfig: &container.HostConfig{NetworkMode: container.NetworkMode(r.network())},
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { r.removeContainer(created.ID) }) // if we fail before the caller removes it
	if _, err := r.cli.ContainerStart(ctx, created.ID, client.ContainerStartOptions{}); err != nil {
		b.Fatal(err)
	}
	res, err := r.cli.ContainerInspect(ctx, created.ID, client.ContainerInspectOptions{})
	if err != nil {
		b.Fatal(err)
	}
	ip := res.Container.NetworkSettings.Networks[r.cfg.Network].IPAddress
	return net.JoinHostPort(ip.String(), strconv.Itoa(defaultPort)), created.ID
}

var benchClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}

// firstOK polls addr until it answers 200.
func firstOK(b testing.TB, addr string) {
	deadline := time.Now().Add(patience)
	for {
		resp, err := benchClient.Get("http://" + addr + "/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s: no 200 in %s: %v", addr, patience, err)
		}
		time.Sleep(time.Millisecond)
	}
}
