// Package jsonbody reads a JSON request body strictly: one JSON value, no
// unknown fields, no key given twice in an object, no null where
// encoding/json would silently take a zero value, and a size limit it
// never reads far past. Its errors name the field at fault in the words of
// the API, not of Go. It never writes a response: each API turns its
// errors into its own error body.
package jsonbody

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strings"

	"github.com/berthhq/berth"
)

// TooLargeError is returned for a body over the limit.
type TooLargeError struct{ Limit int64 }

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("body: larger than the %d-byte limit", e.Limit)
}

// Ranger is implemented by request types whose integer fields have ranges
// to name when a number does not fit (1e30, 1.5): IntRange returns the
// words for the field at path ("between 0 and 3600"), if it knows them.
type Ranger interface {
	IntRange(path string) (string, bool)
}

// Read decodes r's body into v (see Decode), reading at most limit bytes
// and a byte: a body over the limit gives *TooLargeError, and a declared
// length over it is refused unread. Either way the connection closes after
// the answer, so net/http does not read the rest to keep it.
func Read(w http.ResponseWriter, r *http.Request, limit int64, v any) error {
	if r.ContentLength > limit {
		w.Header().Set("Connection", "close")
		return &TooLargeError{Limit: limit}
	}
	r.Body = http.MaxBytesReader(w, r.Body, limit)
	return Decode(r.Body, v)
}

// Decode reads body to its end and decodes it into v strictly. Errors are
// *berth.FieldError (the field at fault, or "body") or *TooLargeError
// (body is an http.MaxBytesReader that hit its limit).
func Decode(body io.Reader, v any) error {
	raw, err := io.ReadAll(body)
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return &TooLargeError{Limit: mbe.Limit}
	}
	if err != nil {
		return badRequest("body", "could not be read: "+err.Error())
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	err = dec.Decode(v)
	if err == nil {
		if dec.More() {
			return badRequest("body", "must hold exactly one JSON object")
		}
		if _, err := dec.Token(); err != io.EOF {
			return badRequest("body", "has data after the JSON object")
		}
		return checkObjects(raw, reflect.TypeOf(v))
	}
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.Is(err, io.EOF):
		return badRequest("body", "is empty; send a JSON object")
	case errors.As(err, &se):
		return badRequest("body", fmt.Sprintf("is not valid JSON (at byte %d): %v", se.Offset, err))
	case errors.As(err, &te):
		field := te.Field
		if field == "" {
			field = "body"
		}
		if isInt(te.Type.Kind()) && strings.HasPrefix(te.Value, "number") {
			// A number, but not one an int holds: 1.5, 1e3, 1e30.
			return badRequest(field, "must be an integer "+intRange(v, field))
		}
		return badRequest(field, fmt.Sprintf("must be %s, not %s", jsonKind(te.Type.Kind().String()), te.Value))
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		name := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		return badRequest(unknownFieldPath(raw, reflect.TypeOf(v), name), "is not a known field")
	}
	return badRequest("body", "is not valid JSON: "+err.Error())
}

// unknownFieldPath finds where in raw the unknown field name sits, as a
// dotted path ("spawn.comand"): encoding/json names only the leaf.
func unknownFieldPath(raw []byte, t reflect.Type, name string) string {
	var doc any
	if json.Unmarshal(raw, &doc) != nil {
		return name
	}
	if p := findUnknown(doc, t, name, ""); p != "" {
		return p
	}
	return name
}

func findUnknown(doc any, t reflect.Type, name, prefix string) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	obj, ok := doc.(map[string]any)
	if !ok || t.Kind() != reflect.Struct {
		return ""
	}
	known := make(map[string]reflect.Type)
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if tag == "-" {
			continue
		}
		if tag == "" {
			tag = f.Name
		}
		known[strings.ToLower(tag)] = f.Type
	}
	for k, sub := range obj {
		ft, ok := known[strings.ToLower(k)]
		if !ok {
			if k == name {
				return prefix + k
			}
			continue
		}
		if p := findUnknown(sub, ft, name, prefix+k+"."); p != "" {
			return p
		}
	}
	return ""
}

func isInt(k reflect.Kind) bool {
	return reflect.Int <= k && k <= reflect.Uint64
}

// intRange words the values the integer field at path of v allows.
func intRange(v any, path string) string {
	if r, ok := v.(Ranger); ok {
		if words, ok := r.IntRange(path); ok {
			return words
		}
	}
	return "that fits in 64 bits"
}

// checkObjects refuses what encoding/json takes silently: a key given
// twice in one object, of which it keeps the last (struct fields match
// regardless of case, so "key" and "KEY" are the same field), and null
// for a map value or an array element, which it takes for "" or 0. raw is
// a valid JSON value that decoded into a value of type t.
func checkObjects(raw []byte, t reflect.Type) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	return walkObjects(dec, t, "", false)
}

// walkObjects reads one value from dec, whose type, if known, is t, at
// path; inContainer says it is a map value or array element.
func walkObjects(dec *json.Decoder, t reflect.Type, path string, inContainer bool) error {
	nullable := t == nil || t.Kind() == reflect.Pointer || t.Kind() == reflect.Interface
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	tok, err := dec.Token()
	if err != nil {
		return badRequest("body", "is not valid JSON: "+err.Error())
	}
	switch tok {
	case nil:
		if inContainer && !nullable {
			return badRequest(path, fmt.Sprintf("must be %s, not null", jsonKind(t.Kind().String())))
		}
	case json.Delim('{'):
		seen := make(map[string]bool)
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return badRequest("body", "is not valid JSON: "+err.Error())
			}
			name, sub, isMap := kt.(string), reflect.Type(nil), false
			switch {
			case t == nil:
			case t.Kind() == reflect.Map:
				sub, isMap = t.Elem(), true
			case t.Kind() == reflect.Struct:
				name, sub = jsonField(t, name)
			}
			p := name
			if path != "" {
				p = path + "." + name
			}
			if seen[name] {
				return badRequest(p, "is given more than once")
			}
			seen[name] = true
			if err := walkObjects(dec, sub, p, isMap); err != nil {
				return err
			}
		}
		dec.Token() // '}'
	case json.Delim('['):
		var elem reflect.Type
		if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			elem = t.Elem()
		}
		for i := 0; dec.More(); i++ {
			if err := walkObjects(dec, elem, fmt.Sprintf("%s[%d]", path, i), elem != nil); err != nil {
				return err
			}
		}
		dec.Token() // ']'
	}
	return nil
}

// jsonField finds the field of struct t that encoding/json decodes the
// object key k into, and returns its JSON name and type; a key that
// matches no field is returned as it is, with no type.
func jsonField(t reflect.Type, k string) (string, reflect.Type) {
	name, typ := k, reflect.Type(nil)
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		n, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if n == "-" || !f.IsExported() {
			continue
		}
		if n == "" {
			n = f.Name
		}
		if n == k {
			return n, f.Type
		}
		if typ == nil && strings.EqualFold(n, k) {
			name, typ = n, f.Type // encoding/json's fallback: any case
		}
	}
	return name, typ
}

func jsonKind(k string) string {
	switch k {
	case "int", "int64", "int32", "uint", "float64":
		return "a number"
	case "map", "struct", "ptr":
		return "an object"
	case "slice":
		return "an array"
	}
	return "a " + k
}

func badRequest(field, msg string) error {
	return &berth.FieldError{Field: field, Message: msg}
}
