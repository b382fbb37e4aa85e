package sqlite

import (
	"database/sql"
	"path/filepath"
	"testing"
)

// The settings the package doc promises, checked on both pools: they are
// easy to lose to a typo in the DSN, and nothing else would notice.
func TestOpen_Pragmas(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "berth.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for name, db := range map[string]*sql.DB{"write": s.w, "read": s.r} {
		for pragma, want := range map[string]string{
			"journal_mode": "wal",
			"synchronous":  "1", // NORMAL
			"foreign_keys": "1",
			"busy_timeout": "10000",
		} {
			var got string
			if err := db.QueryRow("PRAGMA " + pragma).Scan(&got); err != nil {
				t.Fatalf("%s pool: PRAGMA %s: %v", name, pragma, err)
			}
			if got != want {
				t.Errorf("%s pool: %s = %s, want %s", name, pragma, got, want)
			}
		}
	}
	if _, err := s.r.Exec("DELETE FROM events"); err == nil {
		t.Error("the read pool accepted a write")
	}
	var version int
	if err := s.w.QueryRow("PRAGMA user_version").Scan(&version); err != nil || version != len(migrations) {
		t.Errorf("user_version = %d, %v; want %d", version, err, len(migrations))
	}
}

// A database written by a newer berth is refused rather than misread.
func TestOpen_NewerSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "berth.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.w.Exec("PRAGMA user_version = 99"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if s, err := Open(path); err == nil {
		s.Close()
		t.Fatal("Open of a newer schema: no error")
	}
}
