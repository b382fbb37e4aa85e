package cli

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/berthhq/berth/blob"
	"github.com/berthhq/berth/edge"
	"github.com/berthhq/berth/proxy"
	"github.com/berthhq/berth/token"
)

// edgeOptions are the public edge's settings (DESIGN.md, "The public
// edge"): TLS, a hostname per backend, balancers in front, and limits.
type edgeOptions struct {
	TLSAddr        string
	HTTPAddr       string
	TLSCert        string
	TLSKey         string
	HostSuffix     string
	TrustedProxies string
	ProxyProtocol  bool
	ConnsPerIP     int
	RatePerIP      float64
	Burst          int
	MaxHeaderBytes int
	MaxURLBytes    int
	HeaderTimeout  time.Duration
	acme           acmeOptions
}

func (o *edgeOptions) flags(fs *flag.FlagSet, dev bool) {
	// Limits are on for serve, off for dev (one browser on loopback).
	conns, rate, burst := 256, 100.0, 400
	if dev {
		conns, rate, burst = 0, 0, 0
	}
	fs.StringVar(&o.TLSAddr, "proxy-tls-addr", envOr("BERTH_PROXY_TLS_ADDR", ""), "HTTPS listen address of the public edge, e.g. :443 (BERTH_PROXY_TLS_ADDR; needs --proxy-tls-cert/--proxy-tls-key or --acme-email)")
	fs.StringVar(&o.HTTPAddr, "proxy-http-addr", envOr("BERTH_PROXY_HTTP_ADDR", ""), "plain-HTTP listen address of the public edge, e.g. :80: redirects to HTTPS and answers ACME HTTP-01 when TLS is on, else serves the edge behind an L7 balancer (BERTH_PROXY_HTTP_ADDR)")
	fs.StringVar(&o.TLSCert, "proxy-tls-cert", envOr("BERTH_PROXY_TLS_CERT", ""), "PEM certificate chain for the HTTPS edge, reloaded when it changes (BERTH_PROXY_TLS_CERT)")
	fs.StringVar(&o.TLSKey, "proxy-tls-key", envOr("BERTH_PROXY_TLS_KEY", ""), "PEM private key for --proxy-tls-cert (BERTH_PROXY_TLS_KEY)")
	fs.StringVar(&o.HostSuffix, "public-host-suffix", envOr("BERTH_PUBLIC_HOST_SUFFIX", ""), "give each backend a hostname <label>.SUFFIX on the edge instead of a /<token>/ path prefix (BERTH_PUBLIC_HOST_SUFFIX; *.SUFFIX must resolve to the edge)")
	fs.StringVar(&o.TrustedProxies, "trusted-proxies", envOr("BERTH_TRUSTED_PROXIES", ""), "comma-separated CIDRs of balancers whose X-Forwarded-For/-Proto (or PROXY headers) the edge believes (BERTH_TRUSTED_PROXIES)")
	fs.BoolVar(&o.ProxyProtocol, "proxy-protocol", envOr("BERTH_PROXY_PROTOCOL", "") == "1", "every edge connection starts with a PROXY protocol v1/v2 header from an L4 balancer (BERTH_PROXY_PROTOCOL=1)")
	fs.IntVar(&o.ConnsPerIP, "edge-conns-per-ip", conns, "open edge connections one client address may hold; more get 429 (0: no limit)")
	fs.Float64Var(&o.RatePerIP, "edge-rate", rate, "edge requests per second one client address may make; more get 429 (0: no limit)")
	fs.IntVar(&o.Burst, "edge-burst", burst, "requests one client address may make at once above --edge-rate")
	fs.IntVar(&o.MaxHeaderBytes, "edge-max-header-bytes", 64<<10, "largest request header the edge accepts (431 beyond)")
	fs.IntVar(&o.MaxURLBytes, "edge-max-url-bytes", 8<<10, "longest request target the edge accepts (414 beyond)")
	fs.DurationVar(&o.HeaderTimeout, "edge-header-timeout", 10*time.Second, "time a client has for its TLS handshake and each request head (slow clients are cut off)")
	o.acme.flags(fs)
}

// enabled reports whether any edge listener is asked for.
func (o *edgeOptions) enabled() bool { return o.TLSAddr != "" || o.HTTPAddr != "" }

func (o *edgeOptions) validate() error {
	o.HostSuffix = strings.ToLower(strings.Trim(o.HostSuffix, ".")) // DNS names are case-insensitive
	if !o.enabled() {
		if o.HostSuffix != "" {
			return usagef("--public-host-suffix needs the edge: set --proxy-tls-addr (or --proxy-http-addr behind a TLS-terminating balancer)")
		}
		return nil
	}
	hasFiles := o.TLSCert != "" || o.TLSKey != ""
	switch {
	case hasFiles && (o.TLSCert == "" || o.TLSKey == ""):
		return usagef("--proxy-tls-cert and --proxy-tls-key go together")
	case hasFiles && o.acme.on():
		return usagef("--proxy-tls-cert and --acme-email exclude each other: certificates come from files or from ACME")
	case o.TLSAddr != "" && !hasFiles && !o.acme.on():
		return usagef("--proxy-tls-addr needs a certificate: --proxy-tls-cert/--proxy-tls-key, or --acme-email for ACME")
	case o.TLSAddr == "" && (hasFiles || o.acme.on()):
		return usagef("certificates are given but --proxy-tls-addr is not set")
	case o.HostSuffix != "" && (strings.ContainsAny(o.HostSuffix, "/:* ") || !strings.Contains(strings.Trim(o.HostSuffix, "."), ".")):
		return usagef("--public-host-suffix %q: want a DNS name such as berth.example.com", o.HostSuffix)
	case o.ConnsPerIP < 0 || o.RatePerIP < 0 || o.Burst < 0:
		return usagef("--edge-conns-per-ip, --edge-rate and --edge-burst must not be negative")
	}
	if _, err := o.trusted(); err != nil {
		return err
	}
	return o.acme.validate(o.HostSuffix)
}

func (o *edgeOptions) trusted() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range strings.Split(o.TrustedProxies, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return nil, usagef("--trusted-proxies: %q is not a CIDR", s)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// edgeListeners are the edge's sockets, opened before anything else starts
// so a port clash fails fast.
type edgeListeners struct {
	tls, http net.Listener
}

func (o *edgeOptions) listen() (*edgeListeners, error) {
	var l edgeListeners
	var err error
	if o.TLSAddr != "" {
		if l.tls, err = edge.Listen(context.Background(), o.TLSAddr); err != nil {
			return nil, fmt.Errorf("edge: %w (use --proxy-tls-addr)", err)
		}
	}
	if o.HTTPAddr != "" {
		if l.http, err = edge.Listen(context.Background(), o.HTTPAddr); err != nil {
			l.close()
			return nil, fmt.Errorf("edge: %w (use --proxy-http-addr)", err)
		}
	}
	return &l, nil
}

func (l *edgeListeners) close() {
	if l.tls != nil {
		l.tls.Close()
	}
	if l.http != nil {
		l.http.Close()
	}
}

// publicURL is the base of the URLs connect returns when --public-url is
// not given: the edge's, by its host suffix when there is one.
func (o *edgeOptions) publicURL(l *edgeListeners) string {
	scheme, ln, std := "https", l.tls, "443"
	if ln == nil {
		// Behind an L7 balancer that terminates TLS: browsers still
		// speak HTTPS to it.
		scheme, ln = "https", l.http
	}
	host := o.HostSuffix
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	if host == "" {
		host = ln.Addr().String()
		if h, _, _ := net.SplitHostPort(host); net.ParseIP(h).IsUnspecified() {
			host = net.JoinHostPort("localhost", port)
		}
		return scheme + "://" + host
	}
	if port != std && l.tls != nil {
		host = net.JoinHostPort(host, port)
	}
	return scheme + "://" + host
}

// backendURL returns the function that makes connect's URL when backends
// get hostnames, and nil otherwise.
func (o *edgeOptions) backendURL(signer *token.Signer, public string) (func(id, tok string) string, error) {
	if o.HostSuffix == "" {
		return nil, nil
	}
	base, err := url.Parse(public)
	if err != nil || base.Host == "" {
		return nil, usagef("--public-url %q: want scheme://host[:port]", public)
	}
	return func(id, tok string) string {
		if u, ok := proxy.HostURL(signer, base, o.HostSuffix, id, tok); ok {
			return u
		}
		return strings.TrimRight(public, "/") + "/" + tok + "/"
	}, nil
}

// runningEdge is the edge and its certificate manager.
type runningEdge struct {
	srv  *edge.Server
	acme *edge.ACME
}

// Shutdown stops the edge's listeners and renewals.
func (e *runningEdge) Shutdown(ctx context.Context) {
	e.srv.Shutdown(ctx)
	if e.acme != nil {
		e.acme.Close()
	}
}

// start serves the edge on l, in front of px, until Shutdown.
func (o *edgeOptions) start(ctx context.Context, l *edgeListeners, px *proxy.Proxy, signer *token.Signer, blobs blob.Store,
	reg prometheus.Registerer, log *slog.Logger, errC chan<- error) (*runningEdge, error) {
	trusted, _ := o.trusted()
	cfg := edge.Config{
		Handler:        px.Hosts(o.HostSuffix),
		TrustedProxies: trusted,
		ProxyProtocol:  o.ProxyProtocol,
		Limits: edge.Limits{
			ConnsPerIP: o.ConnsPerIP, RatePerIP: o.RatePerIP, Burst: o.Burst,
			MaxHeaderBytes: o.MaxHeaderBytes, MaxURLBytes: o.MaxURLBytes, HeaderTimeout: o.HeaderTimeout,
		},
		Metrics: edge.NewMetrics(reg),
		Logger:  log.With("component", "edge"),
	}
	e := &runningEdge{}
	if l.tls != nil {
		cfg.HTTPSPort = listenPort(l.tls)
		if o.TLSCert != "" {
			files, err := edge.LoadCertFiles(o.TLSCert, o.TLSKey)
			if err != nil {
				return nil, err
			}
			cfg.TLS = edge.TLSConfig(files.GetCertificate)
		} else {
			httpPort := 0
			if l.http != nil {
				httpPort = listenPort(l.http)
			}
			m, err := o.acme.manager(ctx, o.HostSuffix, httpPort, cfg.HTTPSPort, signer, blobs, log)
			if err != nil {
				return nil, err
			}
			e.acme = m
			cfg.TLS = edge.TLSConfig(m.GetCertificate)
			cfg.TLS.NextProtos = append(cfg.TLS.NextProtos, "acme-tls/1") // TLS-ALPN-01
			cfg.ACMEHTTP = m.HandleHTTPChallenge
		}
	}
	if l.tls != nil {
		// HTTPS over HTTP/1.1 takes the proxy's own path, as plain HTTP
		// does on --proxy-addr (BENCHMARKS.md, "The public edge").
		cfg.H1 = px.NewServer(proxy.ServerConfig{NoEventLoop: true, HostSuffix: o.HostSuffix})
	}
	srv, err := edge.New(cfg)
	if err != nil {
		if e.acme != nil {
			e.acme.Close()
		}
		return nil, err
	}
	e.srv = srv
	if l.tls != nil {
		go func() { errC <- srv.Serve(l.tls) }()
	}
	if l.http != nil {
		go func() { errC <- srv.ServeHTTP(l.http) }()
	}
	log.Info("edge is up", "https", addrOf(l.tls), "http", addrOf(l.http), "host_suffix", o.HostSuffix)
	return e, nil
}

func listenPort(ln net.Listener) int {
	_, p, _ := net.SplitHostPort(ln.Addr().String())
	n, _ := strconv.Atoi(p)
	return n
}

func addrOf(ln net.Listener) string {
	if ln == nil {
		return ""
	}
	return ln.Addr().String()
}
