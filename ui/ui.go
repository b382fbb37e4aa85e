// Package ui is Berth's dashboard: plain HTML, CSS and JavaScript embedded
// in the binary and served at /ui/ on the control API. The page reads and
// acts only through the control API, as any client would, so it can show
// nothing the API would not. It must never gain a build step, a third-party
// dependency, or anything fetched from another origin (a CDN): it has to
// work on a machine with no internet.
package ui

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed static
var files embed.FS

// Handler serves the dashboard's files under /ui/.
func Handler() http.Handler {
	static, err := fs.Sub(files, "static")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	fileServer := http.StripPrefix("/ui/", http.FileServerFS(static))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		// Only the page's own files run, and no other site may frame it
		// (its buttons terminate backends).
		h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache")
		fileServer.ServeHTTP(w, r)
	})
}
