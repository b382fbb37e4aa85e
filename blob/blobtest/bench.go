package blobtest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/berthhq/berth/blob"
)

// BenchSizes are the body sizes the adapters' benchmarks use, so a
// store's numbers and its raw-client baseline compare one to one.
var BenchSizes = []int{1 << 20, 16 << 20}

// BenchBody returns size pseudo-random (incompressible) bytes.
func BenchBody(size int) []byte {
	b := make([]byte, size)
	rand.NewChaCha8([32]byte{7}).Read(b)
	return b
}

// SizeName names a sub-benchmark by size: "1MiB".
func SizeName(size int) string {
	if size%(1<<20) == 0 {
		return fmt.Sprintf("%dMiB", size>>20)
	}
	return fmt.Sprintf("%dKiB", size>>10)
}

// BenchPut measures Put of each BenchSizes body, over and over to one key
// (so each includes trimming the history).
func BenchPut(b *testing.B, st blob.Store) {
	for _, size := range BenchSizes {
		b.Run(SizeName(size), func(b *testing.B) {
			data := BenchBody(size)
			key := Key("bench-put")
			ctx := context.Background()
			b.SetBytes(int64(size))
			b.ResetTimer()
			for b.Loop() {
				if _, err := st.Put(ctx, key, 1, bytes.NewReader(data)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchGet measures Get of each BenchSizes body, read to the end.
func BenchGet(b *testing.B, st blob.Store) {
	for _, size := range BenchSizes {
		b.Run(SizeName(size), func(b *testing.B) {
			key := Key("bench-get")
			ctx := context.Background()
			if _, err := st.Put(ctx, key, 1, bytes.NewReader(BenchBody(size))); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(size))
			b.ResetTimer()
			for b.Loop() {
				rc, _, err := st.Get(ctx, key)
				if err != nil {
					b.Fatal(err)
				}
				n, err := io.Copy(io.Discard, rc)
				rc.Close()
				if err != nil || n != int64(size) {
					b.Fatalf("read %d bytes, %v", n, err)
				}
			}
		})
	}
}
