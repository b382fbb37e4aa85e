package file_test

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/berthhq/berth/blob"
	"github.com/berthhq/berth/blob/blobtest"
	"github.com/berthhq/berth/blob/file"
)

func benchStore(b *testing.B) *file.Store {
	s, err := file.New(filepath.Join(b.TempDir(), "blobs"), blob.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

func BenchmarkPut(b *testing.B) { blobtest.BenchPut(b, benchStore(b)) }
func BenchmarkGet(b *testing.B) { blobtest.BenchGet(b, benchStore(b)) }

// BenchmarkRawPut is the baseline for BenchmarkPut: the same bytes written
// to a temp file, fsynced and renamed into place, with no store around it.
func BenchmarkRawPut(b *testing.B) {
	dir := b.TempDir()
	for _, size := range blobtest.BenchSizes {
		b.Run(blobtest.SizeName(size), func(b *testing.B) {
			data := blobtest.BenchBody(size)
			b.SetBytes(int64(size))
			for b.Loop() {
				f, err := os.CreateTemp(dir, "tmp")
				if err != nil {
					b.Fatal(err)
				}
				if _, err := io.Copy(f, bytes.NewReader(data)); err != nil {
					b.Fatal(err)
				}
				if err := f.Sync(); err != nil {
					b.Fatal(err)
				}
				f.Close()
				if err := os.Rename(f.Name(), filepath.Join(dir, "current")); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkRawGet is the baseline for BenchmarkGet: the same bytes read
// from one file.
func BenchmarkRawGet(b *testing.B) {
	dir := b.TempDir()
	for _, size := range blobtest.BenchSizes {
		b.Run(blobtest.SizeName(size), func(b *testing.B) {
			name := filepath.Join(dir, blobtest.SizeName(size))
			if err := os.WriteFile(name, blobtest.BenchBody(size), 0o644); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(size))
			for b.Loop() {
				f, err := os.Open(name)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, f)
				f.Close()
			}
		})
	}
}
