// Command edgeapp is the backend e2e/edge runs behind Berth's edge: a page
// that links by absolute path and sets a cookie on /, as the apps that
// break under a path prefix do, and a WebSocket echo.
package main

import (
	"context"
	"fmt"
	"html"
	"log"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/coder/websocket"
)

func main() {
	m := http.NewServeMux()
	m.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.SetCookie(w, &http.Cookie{Name: "app", Value: "1", Path: "/", SameSite: http.SameSiteLaxMode})
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(w, `<!doctype html><title>edgeapp</title><a id="abs" href="/abs/page?x=1">absolute link</a>`)
	})
	m.HandleFunc("GET /abs/page", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(w, `<!doctype html><title>page</title><p id="path">%s</p><p id="cookie">%s</p><p id="proto">%s</p><p id="backend">%s</p><p id="xff">%s</p>`,
			html.EscapeString(r.URL.RequestURI()), html.EscapeString(r.Header.Get("Cookie")),
			html.EscapeString(r.Header.Get("X-Forwarded-Proto")), html.EscapeString(r.Header.Get("X-Berth-Backend")),
			html.EscapeString(r.Header.Get("X-Forwarded-For")))
	})
	m.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil) // checks Origin against Host
		if err != nil {
			return
		}
		defer c.CloseNow()
		ctx, cancel := context.WithTimeout(r.Context(), time.Minute)
		defer cancel()
		for {
			typ, b, err := c.Read(ctx)
			if err != nil {
				return
			}
			msg := append([]byte(os.Getenv("BERTH_BACKEND_ID")+" "+r.Header.Get("X-Berth-Backend")+" echo "), b...)
			if err := c.Write(ctx, typ, msg); err != nil {
				return
			}
		}
	})
	ln, err := net.Listen("tcp", "127.0.0.1:"+os.Getenv("PORT"))
	if err != nil {
		log.Fatal(err)
	}
	log.Fatal(http.Serve(ln, m))
}
