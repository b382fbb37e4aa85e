package cli

import (
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/berthhq/berth/blob/file"
)

// The default blob store lives in the data dir, whatever characters the
// data dir's path holds ('#' would start a URL's fragment).
func TestOpenBlobs_DefaultInDataDir(t *testing.T) {
	for _, name := range []string{"plain", "notes#1", "what?x=1", "a:b"} {
		dataDir := filepath.Join(t.TempDir(), name)
		st, err := openBlobs(t.Context(), &serverOptions{DataDir: dataDir}, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		fs, ok := st.(*file.Store)
		if !ok {
			t.Fatalf("%s: %T, want a file store", name, st)
		}
		if want := filepath.Join(dataDir, "blobs"); fs.Dir() != want {
			t.Errorf("data dir %q: blobs in %q, want %q", dataDir, fs.Dir(), want)
		}
		st.Close()
	}
}
