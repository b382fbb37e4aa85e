package docker

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/jsonstream"
	"github.com/moby/moby/client"
)

// ErrImageMissing is returned (wrapped) by Start when the image is not on
// the engine and the pull policy forbids pulling it, or pulling it failed.
var ErrImageMissing = errors.New("image is not on the engine")

// Pull policies, as in spawn.pull_policy.
const (
	PullIfNotPresent = "if_not_present"
	PullAlways       = "always"
	PullNever        = "never"
)

// imageInfo is what Start needs from an image's config.
type imageInfo struct {
	user string
}

// image makes sure ref is on the engine as policy says and returns its
// config. An image once found is remembered, so a steady stream of Starts
// of one image costs no inspect; PullAlways pulls every time. An image
// rebuilt under the same name keeps, until Berth restarts, the USER it had
// when first seen, unless its pull policy is always.
func (r *Runtime) image(ctx context.Context, ref, policy string) (imageInfo, error) {
	if policy == "" {
		policy = PullIfNotPresent
	}
	if policy != PullAlways {
		r.imgMu.Lock()
		info, ok := r.images[ref]
		r.imgMu.Unlock()
		if ok {
			return info, nil
		}
	}
	info, err := r.inspectImage(ctx, ref)
	missing := errors.Is(err, ErrImageMissing)
	switch {
	case policy == PullAlways:
		if err := r.pull(ctx, ref); err != nil {
			return imageInfo{}, fmt.Errorf("pull_policy is always: %w", err)
		}
		info, err = r.inspectImage(ctx, ref)
	case missing && policy == PullIfNotPresent:
		if err := r.pull(ctx, ref); err != nil {
			return imageInfo{}, fmt.Errorf("image %s: %w and could not be pulled: %w", ref, ErrImageMissing, err)
		}
		info, err = r.inspectImage(ctx, ref)
	case missing:
		return imageInfo{}, fmt.Errorf("image %s: %w and pull_policy is never: build or load it on the engine first", ref, ErrImageMissing)
	}
	if err != nil {
		return imageInfo{}, err
	}
	r.imgMu.Lock()
	r.images[ref] = info
	r.imgMu.Unlock()
	return info, nil
}

// forgetImage drops ref from the cache, after the engine said it is gone.
func (r *Runtime) forgetImage(ref string) {
	r.imgMu.Lock()
	delete(r.images, ref)
	r.imgMu.Unlock()
}

func (r *Runtime) inspectImage(ctx context.Context, ref string) (imageInfo, error) {
	res, err := r.cli.ImageInspect(ctx, ref)
	if cerrdefs.IsNotFound(err) {
		return imageInfo{}, ErrImageMissing
	}
	if err != nil {
		return imageInfo{}, fmt.Errorf("inspect image %s: %w", ref, err)
	}
	var info imageInfo
	if res.Config != nil {
		info.user = res.Config.User
	}
	return info, nil
}

// pull pulls ref with the engine's own registry credentials, if any.
func (r *Runtime) pull(ctx context.Context, ref string) error {
	r.log.Info("pulling image", "image", ref)
	resp, err := r.cli.ImagePull(ctx, ref, client.ImagePullOptions{})
	if err == nil {
		err = resp.Wait(ctx)
	}
	if err != nil {
		return fmt.Errorf("pull %s: %w", ref, err)
	}
	return nil
}

// ImageFile is one executable file of an image made by ImportImage.
type ImageFile struct {
	Name string // path in the image, without a leading slash
	Data []byte
}

// ImportImage makes the image ref on the engine at host (empty:
// $DOCKER_HOST or the default socket) from files alone, as FROM scratch
// does, with Dockerfile instructions such as ENTRYPOINT or USER as changes.
// It needs neither a registry nor a builder: how Berth makes its own images.
func ImportImage(ctx context.Context, host, ref string, files []ImageFile, changes []string, message string) error {
	cli, err := newClient(ctx, host)
	if err != nil {
		return err
	}
	defer cli.Close()
	return importImage(ctx, cli, ref, files, changes, message)
}

func importImage(ctx context.Context, cli *client.Client, ref string, files []ImageFile, changes []string, message string) error {
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	for _, f := range files {
		// A fixed time, so the same files make the same layer.
		if err := tw.WriteHeader(&tar.Header{Name: f.Name, Mode: 0o555, Size: int64(len(f.Data)), ModTime: time.Unix(0, 0)}); err != nil {
			return err
		}
		if _, err := tw.Write(f.Data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	res, err := cli.ImageImport(ctx, client.ImageImportSource{Source: &layer, SourceName: "-"}, ref,
		client.ImageImportOptions{Changes: changes, Message: message})
	if err != nil {
		return fmt.Errorf("docker: import %s: %w", ref, err)
	}
	defer res.Close()
	dec := json.NewDecoder(res)
	for {
		var m jsonstream.Message
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return fmt.Errorf("docker: import %s: %w", ref, err)
		}
		if m.Error != nil {
			return fmt.Errorf("docker: import %s: %s", ref, m.Error.Message)
		}
	}
}
