package state

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/berthhq/berth"
)

// TestMount_ReservedKeys: the control API's state routes refuse keys under
// @berth/, where the edge keeps its certificates and private keys, even
// when a blob is there.
func TestMount_ReservedKeys(t *testing.T) {
	s, blobs := newService(t)
	key := berth.ReservedKeyPrefix + "acme-index"
	if _, err := blobs.Put(context.Background(), key, 0, strings.NewReader(`["secret"]`)); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	s.Mount(mux)
	for _, req := range []*http.Request{
		httptest.NewRequest(http.MethodGet, "/v1/state?key="+key, nil),
		httptest.NewRequest(http.MethodGet, "/v1/state/data?key="+key, nil),
		httptest.NewRequest(http.MethodPost, "/v1/state/restore", bytes.NewReader([]byte(`{"key":"`+key+`","version":"v"}`))),
	} {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, req)
		if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), `"key"`) || strings.Contains(rec.Body.String(), "secret") {
			t.Errorf("%s %s: %d %s, want 400 naming key", req.Method, req.URL, rec.Code, rec.Body)
		}
	}
}
