package s3_test

import (
	"bytes"
	"context"
	"io"
	"net/url"
	"testing"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/berthhq/berth/blob"
	"github.com/berthhq/berth/blob/blobtest"
	"github.com/berthhq/berth/blob/s3"
)

func benchStore(b *testing.B) *s3.Store {
	s, err := s3.New(context.Background(), testConfig(b), blob.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

func BenchmarkPut(b *testing.B) { blobtest.BenchPut(b, benchStore(b)) }
func BenchmarkGet(b *testing.B) { blobtest.BenchGet(b, benchStore(b)) }

// rawClient is a plain minio client for the same server: the baseline.
func rawClient(b *testing.B) (*minio.Client, s3.Config) {
	cfg := testConfig(b)
	u, _ := url.Parse(cfg.Endpoint)
	c, err := minio.New(u.Host, &minio.Options{
		Creds: credentials.NewEnvAWS(), Secure: u.Scheme == "https",
		Region: "us-east-1", BucketLookup: minio.BucketLookupPath,
	})
	if err != nil {
		b.Fatal(err)
	}
	return c, cfg
}

// BenchmarkRawPut is the baseline for BenchmarkPut: the same bytes PUT to
// one object by the client library, unconditionally, size known up front.
func BenchmarkRawPut(b *testing.B) {
	c, cfg := rawClient(b)
	ctx := context.Background()
	for _, size := range blobtest.BenchSizes {
		b.Run(blobtest.SizeName(size), func(b *testing.B) {
			data := blobtest.BenchBody(size)
			name := cfg.Prefix + "raw-put"
			b.SetBytes(int64(size))
			for b.Loop() {
				if _, err := c.PutObject(ctx, cfg.Bucket, name, bytes.NewReader(data), int64(size), minio.PutObjectOptions{}); err != nil {
					b.Fatal(err)
				}
			}
			c.RemoveObject(ctx, cfg.Bucket, name, minio.RemoveObjectOptions{})
		})
	}
}

// BenchmarkRawGet is the baseline for BenchmarkGet: one GET of the object.
func BenchmarkRawGet(b *testing.B) {
	c, cfg := rawClient(b)
	ctx := context.Background()
	for _, size := range blobtest.BenchSizes {
		b.Run(blobtest.SizeName(size), func(b *testing.B) {
			name := cfg.Prefix + "raw-get"
			if _, err := c.PutObject(ctx, cfg.Bucket, name, bytes.NewReader(blobtest.BenchBody(size)), int64(size), minio.PutObjectOptions{}); err != nil {
				b.Fatal(err)
			}
			defer c.RemoveObject(ctx, cfg.Bucket, name, minio.RemoveObjectOptions{})
			b.SetBytes(int64(size))
			for b.Loop() {
				obj, err := c.GetObject(ctx, cfg.Bucket, name, minio.GetObjectOptions{})
				if err != nil {
					b.Fatal(err)
				}
				if n, err := io.Copy(io.Discard, obj); err != nil || n != int64(size) {
					b.Fatalf("read %d bytes, %v", n, err)
				}
				obj.Close()
			}
		})
	}
}
