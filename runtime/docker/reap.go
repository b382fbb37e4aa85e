package docker

import (
	"context"
	"errors"
	"fmt"

	cerrdefs "github.com/containerd/errdefs"

	"github.com/moby/moby/client"
)

// Reap force-removes every backend container of instance on the engine at
// host (empty: $DOCKER_HOST, else the default socket) and returns how many
// it removed. It is for what a Berth left running when it died (see
// `berth docker-reaper`); a running Berth removes its own with Cleanup.
func Reap(ctx context.Context, host, instance string) (int, error) {
	cli, err := newClient(ctx, host)
	if err != nil {
		return 0, err
	}
	defer cli.Close()
	res, err := cli.ContainerList(ctx, client.ContainerListOptions{
		All:     true,
		Filters: make(client.Filters).Add("label", LabelInstance+"="+instance, LabelManaged+"=true"),
	})
	if err != nil {
		return 0, fmt.Errorf("docker: list: %w", err)
	}
	n := 0
	var errs []error // one container the engine refuses does not spare the rest
	for _, c := range res.Items {
		if c.Labels[LabelBackend] == "" {
			continue // a network sandbox: Berth's own, not a backend
		}
		if _, err := cli.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true}); err != nil && !cerrdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("docker: remove %s: %w", c.ID, err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}
