package state

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"time"
)

// DirSync keeps a mode-dir directory in a place Berth does not share (a
// Pod's emptyDir) through the backend API, in the archive format Berth's
// own dir snapshots use: Restore before the backend starts, Run beside it
// until it is told to stop, then one final save. Saves carry the backend's
// secret, and Berth stores them with the backend's fencing token, so a
// stale holder's save is refused (ErrRefused).
type DirSync struct {
	URL      string // BERTH_STATE_URL
	Secret   string // BERTH_SECRET
	Dir      string // BERTH_STATE_DIR
	Interval time.Duration
	Client   *http.Client
	Logger   *slog.Logger

	lastSum uint64
}

// ErrRefused is returned (wrapped) when Berth refuses a save: the backend
// no longer holds its key.
var ErrRefused = errors.New("state: save refused: this backend no longer holds its key")

func (d *DirSync) client() *http.Client {
	if d.Client != nil {
		return d.Client
	}
	return http.DefaultClient
}

// Restore fills Dir with the key's saved directory; an unsaved key leaves
// it empty.
func (d *DirSync) Restore(ctx context.Context) error {
	if err := os.MkdirAll(d.Dir, 0o777); err != nil {
		return fmt.Errorf("state: restore: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.URL, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+d.Secret)
	resp, err := d.client().Do(req)
	if err != nil {
		return fmt.Errorf("state: restore: %w", err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		if err := extract(resp.Body, d.Dir); err != nil {
			return fmt.Errorf("state: restore into %s: %w", d.Dir, err)
		}
	case http.StatusNotFound:
	default:
		return fmt.Errorf("state: restore: %s", answer(resp))
	}
	d.lastSum, _ = fingerprint(d.Dir)
	return nil
}

// Save archives Dir and PUTs it when it changed since the last save (or
// always, with force).
func (d *DirSync) Save(ctx context.Context, force bool) error {
	sum, err := fingerprint(d.Dir)
	if err != nil {
		return fmt.Errorf("state: save: %w", err)
	}
	if sum == d.lastSum && !force {
		return nil
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(archive(d.Dir, pw)) }()
	defer pr.Close()
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, d.URL, pr)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+d.Secret)
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := d.client().Do(req)
	if err != nil {
		return fmt.Errorf("state: save: %w", err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusConflict:
		return fmt.Errorf("%w: %s", ErrRefused, answer(resp))
	case resp.StatusCode/100 != 2:
		return fmt.Errorf("state: save: %s", answer(resp))
	}
	d.lastSum = sum
	return nil
}

// Run saves every Interval when the directory changed, until ctx ends,
// then takes the final save (bounded by final) and returns its error.
func (d *DirSync) Run(ctx context.Context, final time.Duration) error {
	log := d.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if d.lastSum == 0 {
		d.lastSum, _ = fingerprint(d.Dir) // what Restore left: nothing new to save
	}
	t := time.NewTicker(max(d.Interval, time.Second))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), final)
			defer cancel()
			return d.Save(fctx, true)
		case <-t.C:
			if err := d.Save(ctx, false); err != nil && ctx.Err() == nil {
				log.Warn("periodic state save failed", "err", err)
			}
		}
	}
}

func answer(resp *http.Response) string {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	return fmt.Sprintf("%s: %s", resp.Status, b)
}
