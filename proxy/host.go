package proxy

import (
	"bytes"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/berthhq/berth/api"
	"github.com/berthhq/berth/proxy/internal/h1"
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

// label returns the label of host, lowercased, if host is <label>.<suffix>.
func (h *hostRouter) label(host string) (string, bool) {
	label, ok := hostLabel(h.dotSuffix, host)
	return strings.ToLower(label), ok
}

// hostLabel returns the label of host, in the case it was written, if host
// is <label><dotSuffix>, a port and a final dot aside; dotSuffix is
// lowercase and starts with a dot. It is hostRouter.label for both paths:
// the fast path's Host is bytes in the read buffer.
func hostLabel[T string | []byte](dotSuffix string, host T) (T, bool) {
	var none T
	if dotSuffix == "" {
		return none, false
	}
	if n := len(host); n > 0 && host[n-1] != ']' {
		for i := n - 1; i >= 0; i-- {
			if host[i] == ':' {
				host = host[:i]
				break
			}
		}
	}
	if n := len(host); n > 0 && host[n-1] == '.' {
		host = host[:n-1]
	}
	if len(host) <= len(dotSuffix) || !foldIsASCII(host[len(host)-len(dotSuffix):], dotSuffix) {
		return none, false
	}
	label := host[:len(host)-len(dotSuffix)]
	for i := 0; i < len(label); i++ {
		if label[i] == '.' {
			return none, false
		}
	}
	return label, true
}

// foldIsASCII reports whether b equals the lowercase s, ASCII letters in
// any case. (A Host header is ASCII: both servers refuse any other.)
func foldIsASCII[T string | []byte](b T, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
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
		if err = forBackend(claims, err, id); err == nil {
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

// forBackend is the answer to a cookie's token whose verification gave
// claims and err, on the host of backend id: nil when it admits the
// request.
func forBackend(claims token.Claims, err error, id string) error {
	switch {
	case err != nil:
		return tokenError(err)
	case claims.BackendID != id:
		return errOtherBackend
	}
	return nil
}

func setTokenCookie(w http.ResponseWriter, tok string, expires, now time.Time) {
	http.SetCookie(w, tokenCookie(tok, expires, now))
}

// tokenCookie is the cookie that carries tok on its backend's host.
func tokenCookie(tok string, expires, now time.Time) *http.Cookie {
	return &http.Cookie{
		Name:     CookieName,
		Value:    tok,
		Path:     "/",
		MaxAge:   max(1, int(expires.Sub(now)/time.Second)),
		Secure:   true,
		HttpOnly: true,
		SameSite: http.SameSiteLaxMode,
	}
}

// writeHostRedirect answers the first request of a session on a
// backend's host, whose path starts with tok, as hostRouter does: a
// redirect to the same URL without the token, and the cookie.
func writeHostRedirect(bw h1.Writer, req *request, tok string, expires, now time.Time) {
	bw.WriteString("HTTP/1.1 303 See Other\r\nCache-Control: no-store\r\nLocation: ")
	if rest := req.rest[1+len(req.token):]; len(rest) > 0 {
		bw.Write(rest)
	} else {
		bw.WriteByte('/')
	}
	if len(req.query) > 0 {
		bw.WriteByte('?')
		bw.Write(req.query)
	}
	bw.WriteString("\r\n")
	h1.WriteHeader(bw, "Set-Cookie", tokenCookie(tok, expires, now).String())
	if !req.Head {
		bw.WriteString("Content-Length: 0\r\n") // net/http says nothing to a HEAD
	}
	if req.Close {
		bw.WriteString("Connection: close\r\n")
	}
	bw.WriteString("\r\n")
}

// dropTokenCookie removes Berth's cookie from r: the backend gets only its
// own cookies. A Cookie header that names it keeps its other cookies,
// joined by "; ", or goes when none is left; one that does not is left as
// it is. writeCookieHeader does the same on the fast path.
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
		for c := range strings.SplitSeq(v, ";") {
			if c = strings.TrimSpace(c); c != "" && !isTokenCookie(c) {
				parts = append(parts, c)
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

// isTokenCookie reports whether the cookie-pair c is Berth's cookie. Its
// name is trimmed, as net/http trims it when it reads cookies: whatever
// Request.Cookies counts as the token is dropped.
func isTokenCookie(c string) bool {
	name, _, _ := strings.Cut(c, "=")
	return strings.TrimSpace(name) == CookieName
}

// isTokenCookieBytes is isTokenCookie for the fast path.
func isTokenCookieBytes(c []byte) bool {
	name, _, _ := bytes.Cut(c, []byte{'='})
	return string(bytes.TrimSpace(name)) == CookieName
}

// writeCookieHeader writes the Cookie header line name: v as
// dropTokenCookie leaves it: without Berth's cookie, and not at all when
// no other cookie is left.
func writeCookieHeader(bw h1.Writer, name, v []byte) {
	if !bytes.Contains(v, cookieNameBytes) {
		bw.Write(name)
		bw.WriteString(": ")
		bw.Write(v)
		bw.WriteString("\r\n")
		return
	}
	written := false
	for rest, more := v, true; more; {
		var c []byte
		c, rest, more = bytes.Cut(rest, []byte{';'})
		if c = bytes.TrimSpace(c); len(c) == 0 || isTokenCookieBytes(c) {
			continue
		}
		if written {
			bw.WriteString("; ")
		} else {
			bw.Write(name)
			bw.WriteString(": ")
			written = true
		}
		bw.Write(c)
	}
	if written {
		bw.WriteString("\r\n")
	}
}

var cookieNameBytes = []byte(CookieName)

// noBodyH2 marks an HTTP/2 request whose stream ended with its headers as
// bodiless, as net/http's HTTP/1 server does, so that a GET takes the
// forwarder's path (plain) rather than ReverseProxy's.
func noBodyH2(r *http.Request) {
	if r.ProtoMajor == 2 && r.ContentLength == 0 && r.Body != nil && r.Body != http.NoBody {
		r.Body.Close()
		r.Body = http.NoBody
	}
}
