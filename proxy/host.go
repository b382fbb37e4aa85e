package proxy

import (
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/berthhq/berth/api"
	"github.com/berthhq/berth/token"
)

// Routing by hostname: a backend reached at https://<label>.<suffix>/ sees
// the paths the browser asked for, unprefixed, so apps that emit absolute
// paths or set cookies on / work as they would on a host of their own.
//
// The label names the backend (token.Signer.HostLabel), never its key. The
// token still travels: once, as the first segment of the URL connect
// returns; the proxy answers that first request with a redirect to the
// same URL without the token and a host-only cookie holding the token
// (Secure, HttpOnly, SameSite=Lax, the __Host- prefix so no sibling host
// can set it), which every later request carries. A request that is not a
// plain GET or HEAD (a form post, a WebSocket) may carry the token in its
// path too: it is forwarded without it. The cookie never reaches the
// backend.

// CookieName is the cookie that carries a backend's token on its host.
const CookieName = "__Host-berth"

var (
	errUnknownHost = &httpError{status: http.StatusUnauthorized, code: api.CodeUnauthorized,
		msg: "unknown backend host: use the URL Berth returned from connect"}
	errOtherBackend = &httpError{status: http.StatusUnauthorized, code: api.CodeUnauthorized,
		msg: "the token is for another backend: use the URL Berth returned from connect"}
)

// Hosts returns a handler that routes requests for <label>.<suffix> by
// their host and passes every other request to p, which routes it by the
// token in its path.
func (p *Proxy) Hosts(suffix string) http.Handler {
	suffix = strings.ToLower(strings.Trim(suffix, "."))
	if suffix == "" {
		return &hostRouter{p: p} // path mode; HTTP/2 GETs still take the forwarder
	}
	return &hostRouter{p: p, dotSuffix: "." + suffix}
}

type hostRouter struct {
	p         *Proxy
	dotSuffix string
}

// HostURL returns the URL connect gives for backendID with tok when
// backends are reached by hostname: base (the public URL) with its host
// replaced by <label>.<suffix>, port and scheme kept. It reports false for
// an id that has no label.
func HostURL(s *token.Signer, base *url.URL, suffix, backendID, tok string) (string, bool) {
	label, ok := s.HostLabel(backendID)
	if !ok {
		return "", false
	}
	host := label + "." + strings.Trim(suffix, ".")
	if port := base.Port(); port != "" {
		host = net.JoinHostPort(host, port)
	}
	return base.Scheme + "://" + host + "/" + tok + "/", true
}

// label returns the label of host if host is <label>.<suffix>.
func (h *hostRouter) label(host string) (string, bool) {
	if h.dotSuffix == "" {
		return "", false
	}
	if i := strings.LastIndexByte(host, ':'); i >= 0 && !strings.HasSuffix(host, "]") {
		host = host[:i]
	}
	host = strings.TrimSuffix(host, ".")
	if len(host) <= len(h.dotSuffix) || !strings.EqualFold(host[len(host)-len(h.dotSuffix):], h.dotSuffix) {
		return "", false
	}
	label := host[:len(host)-len(h.dotSuffix)]
	if strings.IndexByte(label, '.') >= 0 {
		return "", false
	}
	return strings.ToLower(label), true
}

func (h *hostRouter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	noBodyH2(r)
	label, ok := h.label(r.Host)
	if !ok {
		h.p.ServeHTTP(w, r)
		return
	}
	if err := h.serve(w, r, label); err != nil {
		h.p.writeError(w, r, err)
	}
}

func (h *hostRouter) serve(w http.ResponseWriter, r *http.Request, label string) error {
	p := h.p
	if absoluteForm(r) {
		return errAbsoluteForm
	}
	id, err := p.cfg.Signer.BackendOfLabel(label)
	if err != nil {
		return errUnknownHost
	}
	now := p.cfg.Now()
	raw := rawTarget(r)

	// The first request: the token is the path's first segment.
	if tok, rest, path, hasRest, err := splitToken(raw, r.URL.Path); err == nil && tok != "" {
		if claims, err := p.cfg.Signer.Verify(tok, now); err == nil {
			if claims.BackendID != id {
				return errOtherBackend
			}
			if !hasRest {
				rest, path = "/", "/"
			}
			if plain(r) {
				setTokenCookie(w, tok, claims.Expires, now)
				loc := rest
				if r.URL.RawQuery != "" {
					loc += "?" + r.URL.RawQuery
				}
				w.Header().Set("Location", loc)
				w.Header().Set("Cache-Control", "no-store")
				w.WriteHeader(http.StatusSeeOther)
				return nil
			}
			dropTokenCookie(r)
			return p.serveVerified(w, r, tok, claims, path, rest)
		}
	}

	// Any later request: the token is in the cookie.
	tok, claims, err := h.cookieToken(r, id, now)
	if err != nil {
		return err
	}
	path, rawPath := r.URL.Path, raw
	if oddPath(raw) {
		clean, ok := cleanPath(raw)
		if !ok {
			return errBadPath
		}
		if path, err = url.PathUnescape(clean); err != nil {
			return errBadPath
		}
		rawPath = clean
	}
	dropTokenCookie(r)
	return p.serveVerified(w, r, tok, claims, path, rawPath)
}

// cookieToken returns the token in r's cookies for backend id. A browser
// sends only the cookie of the host it asks; another backend's token, sent
// by hand, is refused.
func (h *hostRouter) cookieToken(r *http.Request, id string, now time.Time) (string, token.Claims, error) {
	var first error
	for _, c := range r.CookiesNamed(CookieName) {
		claims, err := h.p.cfg.Signer.Verify(c.Value, now)
		switch {
		case err != nil:
			err = tokenError(err)
		case claims.BackendID != id:
			err = errOtherBackend
		default:
			return c.Value, claims, nil
		}
		if first == nil {
			first = err
		}
	}
	if first == nil {
		first = errMissingToken
	}
	return "", token.Claims{}, first
}

func setTokenCookie(w http.ResponseWriter, tok string, expires, now time.Time) {
	http.SetCookie(w, &http.Cookie{
		Name:     CookieName,
		Value:    tok,
		Path:     "/",
		MaxAge:   max(1, int(expires.Sub(now)/time.Second)),
		Secure:   true,
		HttpOnly: true,
		SameSite: http.SameSiteLaxMode,
	})
}

// dropTokenCookie removes Berth's cookie from r: the backend gets only its
// own cookies.
func dropTokenCookie(r *http.Request) {
	vv := r.Header["Cookie"]
	if len(vv) == 0 {
		return
	}
	kept := vv[:0:0]
	for _, v := range vv {
		if !strings.Contains(v, CookieName) {
			kept = append(kept, v)
			continue
		}
		var parts []string
		for _, c := range strings.Split(v, ";") {
			name, _, _ := strings.Cut(strings.TrimSpace(c), "=")
			if name != CookieName {
				parts = append(parts, strings.TrimSpace(c))
			}
		}
		if len(parts) > 0 {
			kept = append(kept, strings.Join(parts, "; "))
		}
	}
	if len(kept) == 0 {
		delete(r.Header, "Cookie")
		return
	}
	r.Header["Cookie"] = kept
}

// noBodyH2 marks an HTTP/2 request whose stream ended with its headers as
// bodiless, as net/http's HTTP/1 server does, so that a GET takes the
// forwarder's path (plain) rather than ReverseProxy's.
func noBodyH2(r *http.Request) {
	if r.ProtoMajor == 2 && r.ContentLength == 0 && r.Body != nil && r.Body != http.NoBody {
		r.Body.Close()
		r.Body = http.NoBody
	}
}
