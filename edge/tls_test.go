package edge

import (
	"os"
	"testing"
	"time"
)

func TestCertFiles_GetCertificate(t *testing.T) {
	ca := newTestCA(t)
	dir := t.TempDir()
	certFile, keyFile := ca.issue(t, dir, "a.test")
	c, err := LoadCertFiles(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	c.every = 0 // look at the files at every handshake
	serial := func() string {
		t.Helper()
		cert, err := c.GetCertificate(nil)
		if err != nil || cert == nil || cert.Leaf == nil {
			t.Fatalf("GetCertificate: %v, %v", cert, err)
		}
		return cert.Leaf.SerialNumber.String()
	}
	first := serial()
	if got := serial(); got != first {
		t.Fatalf("unchanged files: serial %s, then %s", first, got)
	}
	touch := func(at time.Time) {
		t.Helper()
		for _, f := range []string{certFile, keyFile} {
			if err := os.Chtimes(f, at, at); err != nil {
				t.Fatal(err)
			}
		}
	}

	// A renewal: served from the next handshake on.
	ca.issue(t, dir, "a.test")
	touch(time.Now().Add(time.Minute))
	second := serial()
	if second == first {
		t.Fatalf("renewed files: still serial %s", first)
	}

	// A pair caught half written keeps the last good one.
	if err := os.WriteFile(keyFile, []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	touch(time.Now().Add(2 * time.Minute))
	if got := serial(); got != second {
		t.Errorf("bad key file: serial %s, want the last good %s", got, second)
	}

	// Between looks, the files are not read.
	c.every = time.Hour
	serial() // a look, which schedules the next in an hour
	ca.issue(t, dir, "a.test")
	touch(time.Now().Add(3 * time.Minute))
	if got := serial(); got != second {
		t.Errorf("before the next look: serial %s, want %s", got, second)
	}
}
