package proxy

import (
	"net/http"
	"net/url"
	"strings"

	"github.com/berthhq/berth/api"
)

// The path after the token is resolved before it goes to the backend, so
// that the backend and anything in front of Berth agree on what it names:
// dot-segments are removed ("%2e" counts as '.', as browsers count it) and
// runs of '/' are merged, as nginx does by default. A path that would climb
// above the token, or that decodes (through an escaped slash) into one
// with dot-segments, is refused, as is a token segment with escapes in it;
// no browser sends either. Normalizing happens on net/http's path only:
// the fast path hands such requests over, so its check is one compare per
// byte it scans anyway.

var (
	errBadPath = &httpError{status: http.StatusBadRequest, code: api.CodeBadRequest,
		msg: "bad path: it climbs above the token, or has escapes in the token segment"}
	errAbsoluteForm = &httpError{status: http.StatusBadRequest, code: api.CodeBadRequest,
		msg: "the request target must be a path, not an absolute URL"}
)

// rawTarget is the path of r as the client wrote it, escapes included.
func rawTarget(r *http.Request) string {
	if u := r.RequestURI; u != "" && u[0] == '/' {
		if i := strings.IndexByte(u, '?'); i >= 0 {
			u = u[:i]
		}
		return u
	}
	return r.URL.EscapedPath()
}

// absoluteForm reports a request line that names a host
// ("GET http://host/… HTTP/1.1"): its host must not reach the backend.
func absoluteForm(r *http.Request) bool {
	return r.URL.Scheme != "" || r.URL.Host != "" || (r.RequestURI != "" && r.RequestURI[0] != '/')
}

// splitToken splits the raw path "/<token>/<rest>" into the token and
// "/<rest>" resolved by cleanPath, raw, and its decoded form. hasRest is
// false when nothing follows the token; tok is "" when there is none. It
// returns errBadPath for a path it refuses. decoded, when not "", is
// net/http's decoding of the whole path, which saves decoding rest again.
func splitToken(raw, decoded string) (tok, rest, path string, hasRest bool, err error) {
	if len(raw) < 2 || raw[0] != '/' {
		return "", "", "", false, nil
	}
	tok, _, hasRest = strings.Cut(raw[1:], "/")
	if strings.IndexByte(tok, '%') >= 0 {
		return "", "", "", false, errBadPath
	}
	if !hasRest {
		return tok, "", "", false, nil
	}
	rest = raw[1+len(tok):]
	if oddPath(rest) {
		var ok bool
		if rest, ok = cleanPath(rest); !ok {
			return "", "", "", false, errBadPath
		}
		decoded = ""
	}
	// The token has no escapes, so decoded is "/"+tok followed by rest's
	// decoding.
	if len(decoded) > 1+len(tok) && decoded[1:1+len(tok)] == tok {
		path = decoded[1+len(tok):]
	} else if path, err = url.PathUnescape(rest); err != nil {
		return "", "", "", false, errBadPath
	}
	return tok, rest, path, true, nil
}

// oddPath reports whether the raw path p needs cleanPath: it has an empty
// segment, a dot-segment or an escaped slash.
func oddPath[T string | []byte](p T) bool {
	for i := 0; i < len(p); i++ {
		switch p[i] {
		case '/':
			if i+1 < len(p) && p[i+1] == '/' || dots(p[i+1:]) > 0 {
				return true
			}
		case '%':
			if i+2 < len(p) && p[i+1] == '2' && p[i+2]|0x20 == 'f' {
				return true
			}
		}
	}
	return false
}

// dots returns 1 when the segment at the start of s (up to a '/') is ".",
// 2 when it is "..", "%2e" counting as '.', and 0 otherwise.
func dots[T string | []byte](s T) int {
	n := 0
	for i := 0; i < len(s) && s[i] != '/'; n++ {
		switch {
		case n == 2:
			return 0
		case s[i] == '.':
			i++
		case s[i] == '%' && i+2 < len(s) && s[i+1] == '2' && s[i+2]|0x20 == 'e':
			i += 3
		default:
			return 0
		}
	}
	return n
}

// cleanPath removes the dot-segments of the raw path p (RFC 3986, 5.2.4)
// and merges runs of '/'. It reports false when p climbs above its root,
// or when p, once decoded, would still have dot-segments: an escaped slash
// ("..%2f") hides them here, and the backend may decode it.
func cleanPath(p string) (string, bool) {
	var segs []string
	trailing := false // the result ends with '/'
	parts := strings.Split(p[1:], "/")
	for i, s := range parts {
		last := i == len(parts)-1
		switch {
		case s == "" || dots(s) == 1:
			trailing = last
		case dots(s) == 2:
			if len(segs) == 0 {
				return "", false
			}
			segs = segs[:len(segs)-1]
			trailing = last
		default:
			segs = append(segs, s)
		}
	}
	clean := "/" + strings.Join(segs, "/")
	if trailing && len(segs) > 0 {
		clean += "/"
	}
	if strings.Contains(clean, "%2f") || strings.Contains(clean, "%2F") {
		decoded, err := url.PathUnescape(clean)
		if err != nil {
			return "", false
		}
		for _, s := range strings.Split(decoded, "/") {
			if s == "." || s == ".." {
				return "", false
			}
		}
	}
	return clean, true
}
