package state

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/blob"
)

// dirSaver runs mode dir for one backend: it restored the directory before
// start and snapshots it every save interval when it changed.
type dirSaver struct {
	s       *Service
	b       *berth.Backend
	dir     string
	ctx     context.Context
	cancel  context.CancelFunc
	done    chan struct{}
	lastSum uint64
}

// startDir restores key's saved archive into a fresh directory and starts
// the periodic snapshots.
func (s *Service) startDir(ctx context.Context, b *berth.Backend) (*dirSaver, error) {
	dir := filepath.Join(s.cfg.Dir, "dirs", b.ID)
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	os.Chmod(dir, 0o777) // container backends may run as another user
	rc, err := s.Load(ctx, b.Key)
	switch {
	case err == nil:
		err = extract(rc, dir)
		rc.Close()
		if err != nil {
			return nil, fmt.Errorf("state: restore %q: %w", b.Key, err)
		}
	case !errors.Is(err, blob.ErrNotFound):
		return nil, fmt.Errorf("state: load %q: %w", b.Key, err)
	}
	d := s.dirSaver(b)
	d.lastSum, _ = fingerprint(dir)
	s.mu.Lock()
	s.dirs[b.ID] = d
	s.mu.Unlock()
	go d.loop(d.ctx, b.Spawn.SaveInterval())
	return d, nil
}

// dirSaver makes (but does not start) the saver of b's directory.
func (s *Service) dirSaver(b *berth.Backend) *dirSaver {
	ctx, cancel := context.WithCancel(s.ctx)
	return &dirSaver{s: s, b: b, dir: filepath.Join(s.cfg.Dir, "dirs", b.ID), ctx: ctx, cancel: cancel, done: make(chan struct{})}
}

func (d *dirSaver) loop(ctx context.Context, every time.Duration) {
	defer close(d.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := d.save(ctx); err != nil {
				d.s.log.Warn("periodic state snapshot failed", "backend", d.b.ID, "err", err)
			}
		}
	}
}

// save snapshots the directory if it changed since the last snapshot.
func (d *dirSaver) save(ctx context.Context) error {
	sum, err := fingerprint(d.dir)
	if err != nil {
		return err
	}
	if sum == d.lastSum {
		return nil
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(archive(d.dir, pw)) }()
	_, _, err = d.s.Save(ctx, d.b, pr)
	pr.Close()
	if err != nil {
		return err
	}
	d.lastSum = sum
	return nil
}

// finish stops the periodic snapshots and takes the final one.
func (d *dirSaver) finish(ctx context.Context) error {
	d.cancel()
	<-d.done
	d.lastSum = 0 // always take the final snapshot
	return d.save(ctx)
}

// fingerprint summarises names, sizes, modes and times of everything under
// dir, so unchanged directories are not archived again.
func fingerprint(dir string) (uint64, error) {
	h := fnv.New64a()
	err := filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := e.Info()
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s\x00%d\x00%d\x00%d\n", path, fi.Size(), fi.Mode(), fi.ModTime().UnixNano())
		return nil
	})
	return h.Sum64() | 1, err // never 0, which means "unknown"
}

// archive writes dir as a gzipped tar of its regular files and directories.
// Symlinks and special files are skipped: a restore must never create a path
// that points outside the directory.
func archive(dir string, w io.Writer) error {
	zw, _ := gzip.NewWriterLevel(w, gzip.BestSpeed)
	tw := tar.NewWriter(zw)
	err := filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
		if err != nil || path == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		fi, err := e.Info()
		if err != nil {
			return err
		}
		if !fi.Mode().IsRegular() && !fi.IsDir() {
			return nil
		}
		hdr, err := tar.FileInfoHeader(fi, "")
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		hdr.Uname, hdr.Gname = "", ""
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if fi.IsDir() {
			return nil
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		_, err = io.CopyN(tw, f, hdr.Size) // the size in the header, even if the file grows meanwhile
		f.Close()
		return err
	})
	if err == nil {
		err = tw.Close()
	}
	if err == nil {
		err = zw.Close()
	}
	return err
}

// extract unpacks an archive made by archive into dir, refusing any entry
// that would land outside it.
func extract(r io.Reader, dir string) error {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return err
	}
	tr := tar.NewReader(zr)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		name := filepath.Clean(filepath.FromSlash(hdr.Name))
		if filepath.IsAbs(name) || name == ".." || strings.HasPrefix(name, ".."+string(filepath.Separator)) {
			return fmt.Errorf("archive entry %q escapes the directory", hdr.Name)
		}
		target := filepath.Join(dir, name)
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, 0o777); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(target), 0o777); err != nil {
				return err
			}
			f, err := os.OpenFile(target, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, fs.FileMode(hdr.Mode)&0o777|0o600)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		}
	}
}
