package s3_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/berthhq/berth/blob"
	"github.com/berthhq/berth/blob/blobtest"
	"github.com/berthhq/berth/blob/s3"
	"github.com/berthhq/berth/internal/testbin"
)

// privateServer runs a versitygw of this test's own (the binary named in
// BERTH_TEST_S3_CMD), so it can be killed without disturbing other tests.
type privateServer struct {
	t        *testing.T
	bin, dir string
	addr     string
	cmd      *exec.Cmd
}

func (p *privateServer) start() {
	p.t.Helper()
	p.cmd = exec.Command(p.bin, "--port", p.addr, "--access", os.Getenv("AWS_ACCESS_KEY_ID"),
		"--secret", os.Getenv("AWS_SECRET_ACCESS_KEY"), "--region", "us-east-1", "posix", p.dir)
	p.cmd.Stdout, p.cmd.Stderr = io.Discard, io.Discard
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); ; {
		if c, err := net.Dial("tcp", p.addr); err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("versitygw did not start on %s", p.addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *privateServer) kill() {
	p.cmd.Process.Kill()
	p.cmd.Wait()
}

// TestStore_ServerRestart kills the S3 server in the middle of a large
// save, checks that the save fails cleanly and leaves the last committed
// state whole, then starts the server again and checks the same store
// carries on.
func TestStore_ServerRestart(t *testing.T) {
	cmdline := blobtest.Env(t, "BERTH_TEST_S3_CMD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")[0]
	addr := testbin.FreeAddr(t)
	srv := &privateServer{t: t, bin: strings.Fields(cmdline)[0], dir: t.TempDir(), addr: addr}
	srv.start()
	t.Cleanup(srv.kill)

	ctx := context.Background()
	mc, err := minio.New(addr, &minio.Options{Creds: credentials.NewEnvAWS(), Region: "us-east-1", BucketLookup: minio.BucketLookupPath})
	if err != nil {
		t.Fatal(err)
	}
	if err := mc.MakeBucket(ctx, "restart", minio.MakeBucketOptions{}); err != nil {
		t.Fatal(err)
	}
	s, err := s3.New(ctx, s3.Config{Endpoint: "http://" + addr, Bucket: "restart", PathStyle: true, MaxRetries: 2, PartSize: 5 << 20}, blob.Options{})
	if err != nil {
		t.Fatal(err)
	}
	key := "doc/restart"
	if _, err := s.Put(ctx, key, 1, strings.NewReader("committed before the crash")); err != nil {
		t.Fatal(err)
	}

	// A save whose body arrives slowly, so the kill lands mid-upload.
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		_, err := s.Put(ctx, key, 1, pr)
		done <- err
	}()
	chunk := bytes.Repeat([]byte("x"), 1<<20)
	for range 7 { // past the first 5 MiB part
		pw.Write(chunk)
	}
	srv.kill()
	go func() {
		for range 20 {
			if _, err := pw.Write(chunk); err != nil {
				return
			}
		}
		pw.Close()
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Put across a server crash succeeded")
		}
		t.Logf("Put across the crash: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("Put did not return within 60s of the server dying")
	}
	pr.CloseWithError(errors.New("test over"))
	if _, _, err := s.Get(ctx, key); err == nil {
		t.Fatal("Get with the server down succeeded")
	}

	srv.start()
	rc, _, err := s.Get(ctx, key)
	if err != nil {
		t.Fatalf("Get after the restart: %v", err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if string(got) != "committed before the crash" {
		t.Fatalf("after the restart the state is %q", got)
	}
	if _, err := s.Put(ctx, key, 1, strings.NewReader("after the restart")); err != nil {
		t.Fatalf("Put after the restart: %v", err)
	}
	if vs, err := s.Versions(ctx, key); err != nil || len(vs) != 2 {
		t.Fatalf("Versions after the restart = %d, %v; want 2", len(vs), err)
	}
}
