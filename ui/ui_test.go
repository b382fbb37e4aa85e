package ui

import (
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

// The page works offline: it loads its own files, each with its type, and
// nothing from another origin.
func TestHandler_ServesOnlyItsOwnFiles(t *testing.T) {
	srv := httptest.NewServer(Handler())
	t.Cleanup(srv.Close)
	get := func(path string) (string, string) {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d", path, resp.StatusCode)
		}
		return string(b), resp.Header.Get("Content-Type")
	}
	page, typ := get("/ui/")
	if !strings.HasPrefix(typ, "text/html") {
		t.Errorf("GET /ui/: Content-Type %q, want text/html", typ)
	}
	// Every file the page names is served, with a fitting type.
	wantType := map[string]string{".js": "text/javascript", ".css": "text/css"}
	refs := regexp.MustCompile(`(?:src|href)="([^"#]+)"`).FindAllStringSubmatch(page, -1)
	if len(refs) < 2 {
		t.Fatalf("the page names %d files, want its script and style sheet", len(refs))
	}
	for _, m := range refs {
		ref := m[1]
		if ref == "data:," {
			continue
		}
		if strings.Contains(ref, "//") || strings.Contains(ref, ":") {
			t.Errorf("the page loads %q from elsewhere", ref)
			continue
		}
		_, typ := get("/ui/" + ref)
		for ext, want := range wantType {
			if strings.HasSuffix(ref, ext) && !strings.HasPrefix(typ, want) {
				t.Errorf("GET /ui/%s: Content-Type %q, want %s", ref, typ, want)
			}
		}
	}
	// No file reaches for another origin (the SVG namespace is a name, not
	// a fetch).
	err := fs.WalkDir(files, "static", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := files.ReadFile(path)
		if err != nil {
			return err
		}
		text := strings.ReplaceAll(string(b), `"http://www.w3.org/2000/svg"`, "")
		if m := regexp.MustCompile(`(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}`).FindString(text); m != "" {
			t.Errorf("%s refers to another origin: %q", path, m)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
