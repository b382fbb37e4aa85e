package cli

import (
	"errors"
	"flag"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/berthhq/berth/token"
)

func parseEdge(t *testing.T, dev bool, args ...string) (*edgeOptions, error) {
	t.Helper()
	var o edgeOptions
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o.flags(fs, dev)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return &o, o.validate()
}

func TestEdgeOptions_Validate(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string // in the usage error; "" for none
	}{
		{"off", nil, ""},
		{"files", []string{"--proxy-tls-addr", ":0", "--proxy-tls-cert", "c", "--proxy-tls-key", "k"}, ""},
		{"acme with a suffix", []string{"--proxy-tls-addr", ":0", "--acme-email", "a@b", "--public-host-suffix", "berth.example.com"}, ""},
		{"L7: plain edge with hosts", []string{"--proxy-http-addr", ":0", "--public-host-suffix", "b.example.com", "--trusted-proxies", "10.0.0.0/8, 192.168.1.1"}, ""},
		{"suffix without the edge", []string{"--public-host-suffix", "berth.example.com"}, "needs the edge"},
		{"cert without key", []string{"--proxy-tls-addr", ":0", "--proxy-tls-cert", "c"}, "go together"},
		{"TLS without a certificate", []string{"--proxy-tls-addr", ":0"}, "needs a certificate"},
		{"files and ACME", []string{"--proxy-tls-addr", ":0", "--proxy-tls-cert", "c", "--proxy-tls-key", "k", "--acme-email", "a@b"}, "exclude each other"},
		{"certificates without TLS", []string{"--proxy-http-addr", ":0", "--proxy-tls-cert", "c", "--proxy-tls-key", "k"}, "--proxy-tls-addr is not set"},
		{"bad suffix", []string{"--proxy-tls-addr", ":0", "--proxy-tls-cert", "c", "--proxy-tls-key", "k", "--public-host-suffix", "*.x.com"}, "want a DNS name"},
		{"single-label suffix", []string{"--proxy-tls-addr", ":0", "--proxy-tls-cert", "c", "--proxy-tls-key", "k", "--public-host-suffix", "localhost"}, "want a DNS name"},
		{"bad CIDR", []string{"--proxy-http-addr", ":0", "--trusted-proxies", "10.0.0.0/33"}, "not a CIDR"},
		{"negative limit", []string{"--proxy-http-addr", ":0", "--edge-rate", "-1"}, "must not be negative"},
		{"ACME without names", []string{"--proxy-tls-addr", ":0", "--acme-email", "a@b"}, "needs names"},
		{"bad DNS provider", []string{"--proxy-tls-addr", ":0", "--acme-email", "a@b", "--acme-domains", "x.com", "--acme-dns", "cloudflare://x"}, "want exec:"},
		{"DNS without ACME", []string{"--proxy-tls-addr", ":0", "--proxy-tls-cert", "c", "--proxy-tls-key", "k", "--acme-dns", "exec:/x"}, "need --acme-email"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseEdge(t, false, tt.args...)
			var ue *usageError
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("error %v, want none", err)
			case tt.want != "" && (!errors.As(err, &ue) || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("error %v, want a usage error with %q", err, tt.want)
			}
		})
	}
}

func TestEdgeOptions_LimitsByMode(t *testing.T) {
	serve, _ := parseEdge(t, false)
	dev, _ := parseEdge(t, true)
	if serve.ConnsPerIP == 0 || serve.RatePerIP == 0 {
		t.Errorf("serve's limits are off: %+v", serve)
	}
	if dev.ConnsPerIP != 0 || dev.RatePerIP != 0 {
		t.Errorf("dev's limits are on: %+v", dev)
	}
}

func TestEdgeOptions_URLs(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	o, err := parseEdge(t, false, "--proxy-tls-addr", ln.Addr().String(), "--proxy-tls-cert", "c", "--proxy-tls-key", "k", "--public-host-suffix", "Berth.Example.com")
	if err != nil {
		t.Fatal(err)
	}
	public := o.publicURL(&edgeListeners{tls: ln})
	if want := "https://berth.example.com:" + port; public != want {
		t.Errorf("public URL %q, want %q", public, want)
	}
	signer, _ := token.NewSigner([]byte(strings.Repeat("k", 32)))
	urlFor, err := o.backendURL(signer, public)
	if err != nil || urlFor == nil {
		t.Fatalf("backendURL: %v", err)
	}
	label, _ := signer.HostLabel("bk_abcdefghijklmnop")
	if got, want := urlFor("bk_abcdefghijklmnop", "TOK"), "https://"+label+".berth.example.com:"+port+"/TOK/"; got != want {
		t.Errorf("URL %q, want %q", got, want)
	}
	// An id that has no label keeps the path form.
	if got := urlFor("odd id", "TOK"); got != public+"/TOK/" {
		t.Errorf("URL for an unlabelable id: %q", got)
	}
	// Path mode: no function, connect keeps PublicURL/<token>/.
	p, _ := parseEdge(t, false, "--proxy-tls-addr", ":0", "--proxy-tls-cert", "c", "--proxy-tls-key", "k")
	if f, err := p.backendURL(signer, public); f != nil || err != nil {
		t.Errorf("path mode: %v, %v; want no URL function", f != nil, err)
	}
}
