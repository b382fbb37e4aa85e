package s3_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/berthhq/berth/blob"
	"github.com/berthhq/berth/blob/blobtest"
	"github.com/berthhq/berth/blob/s3"
)

// testConfig is the server from .ci/services.sh, under a prefix of its own
// so runs do not meet.
func testConfig(t testing.TB) s3.Config {
	t.Helper()
	var env []string
	if tt, ok := t.(*testing.T); ok {
		env = blobtest.Env(tt, "BERTH_TEST_S3_ENDPOINT", "BERTH_TEST_S3_BUCKET", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
	} else {
		env = benchEnv(t.(*testing.B))
	}
	return s3.Config{
		Endpoint:  env[0],
		Bucket:    env[1],
		Prefix:    fmt.Sprintf("test-%08x/", rand.Uint32()),
		PathStyle: true,
	}
}

func TestStore(t *testing.T) {
	cfg := testConfig(t)
	blobtest.Run(t, func(t *testing.T, opts blob.Options) blob.Store {
		s, err := s3.New(context.Background(), cfg, opts)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func TestParseURL(t *testing.T) {
	tests := []struct {
		url  string
		want s3.Config
		err  string
	}{
		{url: "s3://bucket", want: s3.Config{Bucket: "bucket"}},
		{url: "s3://bucket/a/b/?endpoint=http://127.0.0.1:9000&region=eu-west-1&path_style=true&part_size_mb=16",
			want: s3.Config{Bucket: "bucket", Prefix: "a/b/", Endpoint: "http://127.0.0.1:9000", Region: "eu-west-1", PathStyle: true, PartSize: 16 << 20}},
		{url: "s3://AKIA:secret@bucket", err: "credentials"},
		{url: "s3://bucket?access_key=AKIA", err: "never read from the URL"},
		{url: "s3://bucket?secret_access_key=x", err: "never read from the URL"},
		{url: "s3://bucket?colour=blue", err: "unknown"},
		{url: "s3:///prefix", err: "no bucket"},
		{url: "file:/x", err: "scheme"},
	}
	for _, tt := range tests {
		got, err := s3.ParseURL(tt.url)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParseURL(%q) err = %v; want one mentioning %q", tt.url, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseURL(%q) = %+v, %v; want %+v", tt.url, got, err, tt.want)
		}
	}
}

func TestNew_NoBucket(t *testing.T) {
	cfg := testConfig(t)
	cfg.Bucket = "berth-no-such-bucket"
	if _, err := s3.New(context.Background(), cfg, blob.Options{}); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("New with a missing bucket: err = %v; want it to say the bucket does not exist", err)
	}
}

// flaky is a transport that can be told to fail requests, standing for a
// server that went away or a network that dropped an answer.
type flaky struct {
	base http.RoundTripper
	// failIf, when it returns true for a request, makes the request fail
	// without reaching the server.
	failIf atomic.Pointer[func(*http.Request) bool]
	// loseAnswer, when it returns true, sends the request but reports an
	// error instead of the server's answer.
	loseAnswer atomic.Pointer[func(*http.Request) bool]
}

var errInjected = errors.New("injected network failure")

func (f *flaky) RoundTrip(r *http.Request) (*http.Response, error) {
	if p := f.failIf.Load(); p != nil && (*p)(r) {
		if r.Body != nil {
			r.Body.Close()
		}
		return nil, errInjected
	}
	resp, err := f.base.RoundTrip(r)
	if p := f.loseAnswer.Load(); err == nil && p != nil && (*p)(r) {
		resp.Body.Close()
		return nil, errInjected
	}
	return resp, err
}

func (f *flaky) set(p *atomic.Pointer[func(*http.Request) bool], fn func(*http.Request) bool) {
	if fn == nil {
		p.Store(nil)
		return
	}
	p.Store(&fn)
}

// TestStore_ServerFailures drives the store through a transport that fails
// on cue: every failed save must leave the stored state whole and
// unchanged, and the store must work again once the server answers.
func TestStore_ServerFailures(t *testing.T) {
	cfg := testConfig(t)
	f := &flaky{base: http.DefaultTransport.(*http.Transport).Clone()}
	cfg.Transport = f
	cfg.MaxRetries = 1
	cfg.PartSize = 5 << 20
	ctx := context.Background()
	s, err := s3.New(ctx, cfg, blob.Options{})
	if err != nil {
		t.Fatal(err)
	}
	key := blobtest.Key("failures")
	if _, err := s.Put(ctx, key, 1, strings.NewReader("intact")); err != nil {
		t.Fatal(err)
	}
	wantCurrent := func(want string) {
		t.Helper()
		f.set(&f.failIf, nil)
		f.set(&f.loseAnswer, nil)
		rc, _, err := s.Get(ctx, key)
		if err != nil {
			t.Fatalf("Get: %v", err)
		}
		defer rc.Close()
		b, err := io.ReadAll(rc)
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != want {
			t.Fatalf("current state = %q; want %q", clip(string(b)), clip(want))
		}
	}

	t.Run("server down", func(t *testing.T) {
		f.set(&f.failIf, func(*http.Request) bool { return true })
		if _, err := s.Put(ctx, key, 1, strings.NewReader("lost")); !errors.Is(err, errInjected) {
			t.Fatalf("Put with the server down: err = %v; want the network error", err)
		}
		wantCurrent("intact")
	})

	t.Run("down mid-upload", func(t *testing.T) {
		var parts atomic.Int32
		f.set(&f.failIf, func(r *http.Request) bool {
			return r.URL.Query().Has("partNumber") && parts.Add(1) > 1
		})
		big := strings.Repeat("b", 12<<20) // three parts
		if _, err := s.Put(ctx, key, 1, strings.NewReader(big)); err == nil {
			t.Fatal("Put that lost the server mid-upload succeeded")
		}
		wantCurrent("intact")
	})

	t.Run("down before commit", func(t *testing.T) {
		f.set(&f.failIf, func(r *http.Request) bool {
			return r.Method == http.MethodPut && strings.HasSuffix(r.URL.Path, "/manifest.json")
		})
		if _, err := s.Put(ctx, key, 1, strings.NewReader("not committed")); err == nil {
			t.Fatal("Put whose manifest write failed succeeded")
		}
		wantCurrent("intact")
	})

	t.Run("commit answer lost", func(t *testing.T) {
		// The manifest write lands but its answer is lost; the client's
		// retry then meets a changed ETag. The store must recognise its own
		// commit rather than fail or commit twice.
		var once atomic.Bool
		f.set(&f.loseAnswer, func(r *http.Request) bool {
			return r.Method == http.MethodPut && strings.HasSuffix(r.URL.Path, "/manifest.json") && once.CompareAndSwap(false, true)
		})
		info, err := s.Put(ctx, key, 1, strings.NewReader("committed once"))
		if err != nil {
			t.Fatalf("Put whose commit answer was lost: %v", err)
		}
		wantCurrent("committed once")
		vs, err := s.Versions(ctx, key)
		if err != nil || vs[0].Version != info.Version || (len(vs) > 1 && vs[1].Version == info.Version) {
			t.Fatalf("Versions = %+v, %v; want %s once, at the head", vs, err, info.Version)
		}
	})

	t.Run("recovers", func(t *testing.T) {
		if _, err := s.Put(ctx, key, 1, strings.NewReader("after")); err != nil {
			t.Fatalf("Put after the server came back: %v", err)
		}
		wantCurrent("after")
	})
}

func clip(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

func benchEnv(b *testing.B) []string {
	vals := []string{}
	for _, n := range []string{"BERTH_TEST_S3_ENDPOINT", "BERTH_TEST_S3_BUCKET", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} {
		v := os.Getenv(n)
		if v == "" {
			b.Skip(n + " is not set: run `source .ci/services.sh` first")
		}
		vals = append(vals, v)
	}
	return vals
}

// ignoreConditions turns the server's refusals of conditional writes into
// successes, as a server that ignores If-Match/If-None-Match would answer.
type ignoreConditions struct{ base http.RoundTripper }

func (s ignoreConditions) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := s.base.RoundTrip(r)
	if err != nil || resp.StatusCode != http.StatusPreconditionFailed {
		return resp, err
	}
	resp.Body.Close()
	h := http.Header{}
	h.Set("ETag", `"0123456789abcdef0123456789abcdef"`)
	return &http.Response{StatusCode: http.StatusOK, Status: "200 OK", Header: h, Body: http.NoBody,
		Proto: resp.Proto, ProtoMajor: resp.ProtoMajor, ProtoMinor: resp.ProtoMinor, Request: r}, nil
}

// TestNew_RefusesServerWithoutConditionalWrites checks the probe: a server
// that ignores conditional writes cannot fence, so the store must refuse it.
// (It also shows the test server does honour them: the same probe passes
// when the headers get through, in every other test.)
func TestNew_RefusesServerWithoutConditionalWrites(t *testing.T) {
	cfg := testConfig(t)
	cfg.Transport = ignoreConditions{http.DefaultTransport}
	_, err := s3.New(context.Background(), cfg, blob.Options{})
	if err == nil || !strings.Contains(err.Error(), "does not honour") {
		t.Fatalf("New against a server ignoring conditional writes: err = %v; want a refusal", err)
	}
}
