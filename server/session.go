package server

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/berthhq/berth/api"
)

// The dashboard signs in with the API key once and then holds a session
// cookie, so the key never sits in a URL or in the page's script. The
// cookie is the expiry and an HMAC of it under the API key: nothing to
// store, valid on every replica that shares the key, void when the key
// changes. It carries no key a stolen cookie would reveal.
const (
	sessionCookie = "berth_session"
	sessionTTL    = 12 * time.Hour
	// UIHeader must accompany every request a session cookie authenticates
	// that is not GET or HEAD. A cross-site page cannot send a custom header
	// without CORS, which Berth never grants; with SameSite=Strict that
	// shuts out cross-site request forgery.
	UIHeader = "X-Berth-UI"
)

// sessions issues and checks session cookies for one API key; with no key
// (berth dev) nobody needs to sign in.
type sessions struct{ key string }

func (s sessions) mac(expiry string) string {
	m := hmac.New(sha256.New, []byte(s.key))
	m.Write([]byte("berth-ui-session\x00" + expiry))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func (s sessions) issue(now time.Time) string {
	exp := strconv.FormatInt(now.Add(sessionTTL).Unix(), 10)
	return exp + "." + s.mac(exp)
}

// valid reports whether r carries an unexpired session cookie of this key.
func (s sessions) valid(r *http.Request, now time.Time) bool {
	c, err := r.Cookie(sessionCookie)
	if err != nil || s.key == "" {
		return false
	}
	exp, sig, ok := strings.Cut(c.Value, ".")
	unix, err := strconv.ParseInt(exp, 10, 64)
	if !ok || err != nil || now.Unix() >= unix {
		return false
	}
	return hmac.Equal([]byte(sig), []byte(s.mac(exp)))
}

// publicPath reports whether a path is served without the API key: the
// health check, the root's redirect, and the dashboard's own files and
// sign-in (its data all comes from the API, which asks for the key).
func publicPath(p string) bool {
	return p == "/healthz" || p == "/" || p == "/ui" || strings.HasPrefix(p, "/ui/")
}

// checkUIHeader refuses a request signed in by the session cookie that
// may change state (not GET or HEAD) without UIHeader.
func checkUIHeader(r *http.Request) error {
	if r.Method == http.MethodGet || r.Method == http.MethodHead || r.Header.Get(UIHeader) == "1" {
		return nil
	}
	return &HTTPError{Status: http.StatusForbidden, Code: api.CodeForbidden,
		Message: "a request signed in by the dashboard's cookie that changes anything must carry the header " + UIHeader + ": 1"}
}

// mountSessions serves the dashboard's sign-in: GET /ui/session says
// whether one is needed and held, POST /ui/login {"key"} sets the cookie,
// POST /ui/logout clears it.
func (a *apiServer) mountSessions(mux *http.ServeMux, s sessions) {
	mux.Handle("GET /ui/session", a.handle(func(w http.ResponseWriter, r *http.Request) error {
		writeJSON(w, http.StatusOK, map[string]bool{"key_required": s.key != "", "signed_in": s.key == "" || s.valid(r, time.Now())})
		return nil
	}))
	mux.Handle("POST /ui/login", a.handle(func(w http.ResponseWriter, r *http.Request) error {
		var req struct {
			Key string `json:"key"`
		}
		if err := DecodeJSON(w, r, &req); err != nil {
			return err
		}
		if s.key == "" {
			return badRequest("key", "this Berth has no API key (berth dev); there is nothing to sign in to")
		}
		// Hashed first: ConstantTimeCompare returns early on unequal lengths.
		got, want := sha256.Sum256([]byte(req.Key)), sha256.Sum256([]byte(s.key))
		if subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
			return &HTTPError{Status: http.StatusUnauthorized, Code: api.CodeUnauthorized, Field: "key", Message: "key: wrong API key"}
		}
		http.SetCookie(w, sessionCookieFor(r, s.issue(time.Now()), int(sessionTTL/time.Second)))
		w.WriteHeader(http.StatusNoContent)
		return nil
	}))
	mux.Handle("POST /ui/logout", a.handle(func(w http.ResponseWriter, r *http.Request) error {
		if err := checkUIHeader(r); err != nil {
			return err
		}
		http.SetCookie(w, sessionCookieFor(r, "", -1))
		w.WriteHeader(http.StatusNoContent)
		return nil
	}))
}

func sessionCookieFor(r *http.Request, value string, maxAge int) *http.Cookie {
	return &http.Cookie{
		Name: sessionCookie, Value: value, Path: "/", MaxAge: maxAge,
		HttpOnly: true, SameSite: http.SameSiteStrictMode,
		// Behind a TLS-terminating load balancer the request arrives as
		// plain HTTP; the browser still saw HTTPS.
		Secure: r.TLS != nil || r.Header.Get("X-Forwarded-Proto") == "https",
	}
}
