package s3_test

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// TestServer_ConditionalPutIsAtomic checks the one thing the adapter's
// fencing assumes of the server: of several PUTs racing with the same
// If-Match (or If-None-Match: *), exactly one succeeds.
func TestServer_ConditionalPutIsAtomic(t *testing.T) {
	cfg := testConfig(t)
	u, _ := url.Parse(cfg.Endpoint)
	c, err := minio.New(u.Host, &minio.Options{
		Creds:        credentials.NewEnvAWS(),
		Secure:       u.Scheme == "https",
		Region:       "us-east-1",
		BucketLookup: minio.BucketLookupPath,
	})
	if err != nil {
		t.Fatal(err)
	}
	core := minio.Core{Client: c}
	ctx := context.Background()
	name := cfg.Prefix + "atomic-probe"
	defer c.RemoveObject(ctx, cfg.Bucket, name, minio.RemoveObjectOptions{})

	race := func(round int, cond func(*minio.PutObjectOptions)) (wins int32, etag string) {
		const n = 16
		var won atomic.Int32
		var mu sync.Mutex
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range n {
			wg.Go(func() {
				body := fmt.Sprintf("round %d writer %d", round, i)
				opts := minio.PutObjectOptions{}
				cond(&opts)
				<-start
				info, err := core.PutObject(ctx, cfg.Bucket, name, strings.NewReader(body), int64(len(body)), "", "", opts)
				if err == nil {
					won.Add(1)
					mu.Lock()
					etag = info.ETag
					mu.Unlock()
				} else if r := minio.ToErrorResponse(err); r.StatusCode != 412 && r.StatusCode != 409 {
					t.Errorf("conditional PUT: %v", err)
				}
			})
		}
		close(start)
		wg.Wait()
		return won.Load(), strings.Trim(etag, `"`)
	}

	wins, etag := race(0, func(o *minio.PutObjectOptions) { o.SetMatchETagExcept("*") })
	if wins != 1 {
		t.Fatalf("%d of 16 racing PUTs with If-None-Match: * succeeded; want exactly 1", wins)
	}
	for round := 1; round <= 10; round++ {
		prev := etag
		wins, etag = race(round, func(o *minio.PutObjectOptions) { o.SetMatchETag(prev) })
		if wins != 1 {
			t.Fatalf("round %d: %d of 16 racing PUTs with the same If-Match succeeded; want exactly 1", round, wins)
		}
	}
}
