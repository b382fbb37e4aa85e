package jsonbody_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/internal/jsonbody"
)

type inner struct {
	N   int               `json:"n"`
	Env map[string]string `json:"env"`
}

type request struct {
	Name  string   `json:"name"`
	Inner *inner   `json:"inner"`
	Args  []string `json:"args"`
}

func (*request) IntRange(path string) (string, bool) {
	return "between 0 and 9", path == "inner.n"
}

func TestDecode(t *testing.T) {
	tests := []struct {
		body, field, says string
	}{
		{`{"name":"a","inner":{"n":1,"env":{"A":"1","a":"2"}},"args":["x"]}`, "", ""},
		{``, "body", "empty"},
		{`{"name":`, "body", "not valid JSON"},
		{`{"name":"a"} x`, "body", "exactly one"},
		{`{"nmae":"a"}`, "nmae", "not a known field"},
		{`{"inner":{"m":1}}`, "inner.m", "not a known field"},
		{`{"inner":{"n":1e30}}`, "inner.n", "between 0 and 9"},
		{`{"name":"a","NAME":"b"}`, "name", "more than once"},
		{`{"inner":{"env":{"A":"1","A":"2"}}}`, "inner.env.A", "more than once"},
		{`{"inner":{"env":{"A":null}}}`, "inner.env.A", "null"},
		{`{"args":["x",null]}`, "args[1]", "null"},
	}
	for _, tt := range tests {
		var v request
		err := jsonbody.Decode(strings.NewReader(tt.body), &v)
		if tt.field == "" {
			if err != nil {
				t.Errorf("%s: %v, want it accepted", tt.body, err)
			}
			continue
		}
		var fe *berth.FieldError
		if !errors.As(err, &fe) || fe.Field != tt.field || !strings.Contains(fe.Message, tt.says) {
			t.Errorf("%s: %v, want a FieldError on %s saying %q", tt.body, err, tt.field, tt.says)
		}
	}
}
