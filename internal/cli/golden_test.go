package cli

import (
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the testdata/*.golden files from the output of the code")

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (create it with: go test ./internal/cli -run %s -update)", err, t.Name())
	}
	if got != string(want) {
		t.Errorf("output differs from %s (if the change is meant, rerun with -update):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

// fixedNow is the clock of golden tests: ages in their tables are fixed.
var fixedNow = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

// setClock fixes the clock and the local time zone (times are shown in
// local time) for one test; such tests do not run in parallel.
func setClock(t *testing.T) {
	t.Helper()
	oldNow, oldLocal := now, time.Local
	now, time.Local = func() time.Time { return fixedNow }, time.UTC
	t.Cleanup(func() { now, time.Local = oldNow, oldLocal })
}
