package proxy

import (
	"bufio"
	"net/http"
	"reflect"
	"strings"
	"testing"
)

func TestHead(t *testing.T) {
	tests := []struct {
		name string
		head string
		xff  []string
	}{
		{"no forwarded header", "GET /t/a HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n", nil},
		{"two, any case", "HEAD /t/a?q HTTP/1.1\r\nx-forwarded-for: 1.2.3.4\r\nHost: x\r\nX-Forwarded-For: 5.6.7.8, 9.9.9.9\r\n\r\n", []string{"1.2.3.4", "5.6.7.8, 9.9.9.9"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r request
			if !r.parse([]byte(tt.head)) {
				t.Fatal("not parsed")
			}
			h := Head{&r}
			if got := h.Values("X-Forwarded-For"); !reflect.DeepEqual(got, tt.xff) {
				t.Errorf("Values = %q, want %q", got, tt.xff)
			}
			// HeaderBytes counts as the edge counts net/http's Header.
			hr, err := http.ReadRequest(bufio.NewReader(strings.NewReader(tt.head)))
			if err != nil {
				t.Fatal(err)
			}
			want := 0
			for k, vv := range hr.Header {
				for _, v := range vv {
					want += len(k) + len(v) + 4
				}
			}
			if got := h.HeaderBytes(); got != want {
				t.Errorf("HeaderBytes = %d, want %d", got, want)
			}
			if got, want := h.TargetLen(), len(hr.RequestURI); got != want {
				t.Errorf("TargetLen = %d, want %d", got, want)
			}
			if got, want := h.IsHead(), strings.HasPrefix(tt.head, "HEAD"); got != want {
				t.Errorf("IsHead = %v", got)
			}
		})
	}
}
