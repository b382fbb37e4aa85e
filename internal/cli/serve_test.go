package cli

import (
	"net"
	"testing"
)

// TestDefaultPublicURL: without --public-url, connect URLs name the
// proxy's address, but never a wildcard one a browser cannot dial (the
// Dockerfile's BERTH_PROXY_ADDR=0.0.0.0:7080 gave http://[::]:7080/…).
func TestDefaultPublicURL(t *testing.T) {
	tests := []struct {
		addr         string
		want         string
		wantWildcard bool
	}{
		{"127.0.0.1:7080", "http://127.0.0.1:7080", false},
		{"192.0.2.10:7080", "http://192.0.2.10:7080", false},
		{"[::1]:7080", "http://[::1]:7080", false},
		{"0.0.0.0:7080", "http://localhost:7080", true},
		{"[::]:7080", "http://localhost:7080", true},
	}
	for _, tt := range tests {
		addr, err := net.ResolveTCPAddr("tcp", tt.addr)
		if err != nil {
			t.Fatal(err)
		}
		got, wildcard := defaultPublicURL(addr)
		if got != tt.want || wildcard != tt.wantWildcard {
			t.Errorf("defaultPublicURL(%s) = %q, %v; want %q, %v", tt.addr, got, wildcard, tt.want, tt.wantWildcard)
		}
	}
}
