package edge

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net/http"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/libdns/libdns"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// ACME obtains and renews the edge's certificates with certmagic (see
// DESIGN.md, "The public edge", for why certmagic over autocert): DNS-01
// through a libdns provider for a wildcard certificate, else HTTP-01 (on
// the edge's HTTP listener) and TLS-ALPN-01 (on its TLS listener) for the
// names it manages and, on demand, for the backends' hostnames it is
// allowed to.
type ACME struct {
	cfg    *certmagic.Config
	issuer *certmagic.ACMEIssuer
	cache  *certmagic.Cache
}

// DNSProvider sets and removes the TXT records of DNS-01 challenges: any
// libdns provider (github.com/libdns/*).
type DNSProvider interface {
	libdns.RecordAppender
	libdns.RecordDeleter
}

// ACMEConfig configures ACME.
type ACMEConfig struct {
	// CA is the ACME directory URL (certmagic.LetsEncryptProductionCA).
	CA    string
	Email string
	// Roots, if set, are the roots that the CA's own HTTPS endpoint is
	// checked against (a private CA, or Pebble in tests).
	Roots *x509.CertPool
	// Storage keeps certificates, keys and accounts (NewBlobStorage).
	Storage certmagic.Storage
	// Domains are obtained at start and kept renewed, e.g. "*.berth.example.com".
	Domains []string
	// OnDemand, if set, allows a certificate for a name not in Domains to
	// be obtained during the first handshake that asks for it; it returns
	// an error for a name that must not get one.
	OnDemand func(ctx context.Context, name string) error
	// DNS, if set, solves DNS-01 challenges (and only those): required for
	// a wildcard in Domains.
	DNS DNSProvider
	// DNSResolvers are the resolvers certmagic asks to find a zone (host:port);
	// empty: the system's.
	DNSResolvers []string
	// NoPropagationCheck skips waiting until the TXT record is visible
	// (for a DNS server that is its own authority, as in tests);
	// PropagationTimeout bounds the wait otherwise (0: certmagic's 2 min).
	NoPropagationCheck bool
	PropagationTimeout time.Duration
	// HTTPPort and TLSPort are where the edge listens, for the challenges
	// it answers itself.
	HTTPPort, TLSPort int
	// RenewCheck is how often certificates are checked for renewal; 0:
	// certmagic's default (10 min). Short-lived certificates need less.
	RenewCheck time.Duration
	// Profile asks the CA for a certificate profile ("shortlived"); "": the CA's default.
	Profile string
	Logger  *slog.Logger
}

// NewACME starts managing cfg.Domains (in the background: a certificate
// not yet obtained fails handshakes that ask for it until it is) and
// returns the manager. Close stops its maintenance.
func NewACME(ctx context.Context, cfg ACMEConfig) (*ACME, error) {
	if cfg.Storage == nil || cfg.CA == "" {
		return nil, errors.New("edge: ACME needs a CA and storage")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	zl := zap.New(&slogCore{log: cfg.Logger.With("component", "acme")})
	a := &ACME{}
	a.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert:   func(certmagic.Certificate) (*certmagic.Config, error) { return a.cfg, nil },
		RenewCheckInterval: cfg.RenewCheck,
		OCSPCheckInterval:  cfg.RenewCheck,
		Logger:             zl,
	})
	mc := certmagic.Config{Storage: cfg.Storage, Logger: zl}
	if cfg.OnDemand != nil {
		mc.OnDemand = &certmagic.OnDemandConfig{DecisionFunc: cfg.OnDemand}
	}
	a.cfg = certmagic.New(a.cache, mc)
	iss := certmagic.ACMEIssuer{
		CA:             cfg.CA,
		Email:          cfg.Email,
		Agreed:         true,
		TrustedRoots:   cfg.Roots,
		AltHTTPPort:    cfg.HTTPPort,
		AltTLSALPNPort: cfg.TLSPort,
		Profile:        cfg.Profile,
		Logger:         zl,
	}
	if cfg.HTTPPort == 0 {
		iss.DisableHTTPChallenge = true
	}
	if cfg.DNS != nil {
		iss.DisableHTTPChallenge, iss.DisableTLSALPNChallenge = true, true
		solver := &certmagic.DNS01Solver{}
		solver.DNSProvider, solver.Resolvers, solver.Logger = cfg.DNS, cfg.DNSResolvers, zl
		solver.PropagationTimeout = cfg.PropagationTimeout
		if cfg.NoPropagationCheck {
			solver.PropagationTimeout = -1
		}
		iss.DNS01Solver = solver
	}
	a.issuer = certmagic.NewACMEIssuer(a.cfg, iss)
	a.cfg.Issuers = []certmagic.Issuer{a.issuer}
	if len(cfg.Domains) > 0 {
		if err := a.cfg.ManageAsync(ctx, cfg.Domains); err != nil {
			a.cache.Stop()
			return nil, err
		}
	}
	return a, nil
}

// GetCertificate is for tls.Config.GetCertificate; it also answers
// TLS-ALPN-01 challenges (ALPN acme-tls/1).
func (a *ACME) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	return a.cfg.GetCertificate(hello)
}

// HandleHTTPChallenge answers an HTTP-01 challenge, its own or one another
// replica sharing the storage started; it reports whether r was one.
func (a *ACME) HandleHTTPChallenge(w http.ResponseWriter, r *http.Request) bool {
	return a.issuer.HandleHTTPChallenge(w, r)
}

// Manage obtains (now) and keeps renewed certificates for names.
func (a *ACME) Manage(ctx context.Context, names []string) error {
	return a.cfg.ManageSync(ctx, names)
}

// Close stops renewals.
func (a *ACME) Close() { a.cache.Stop() }

// slogCore sends certmagic's zap logs to slog, info and above.
type slogCore struct {
	log    *slog.Logger
	fields []zapcore.Field
}

func (c *slogCore) Enabled(l zapcore.Level) bool { return l >= zapcore.InfoLevel }

func (c *slogCore) With(fs []zapcore.Field) zapcore.Core {
	return &slogCore{log: c.log, fields: append(append([]zapcore.Field(nil), c.fields...), fs...)}
}

func (c *slogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *slogCore) Write(e zapcore.Entry, fs []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range append(append([]zapcore.Field(nil), c.fields...), fs...) {
		f.AddTo(enc)
	}
	attrs := make([]any, 0, 2*len(enc.Fields))
	for k, v := range enc.Fields {
		attrs = append(attrs, k, v)
	}
	level := slog.LevelInfo
	switch {
	case e.Level >= zapcore.ErrorLevel:
		level = slog.LevelError
	case e.Level == zapcore.WarnLevel:
		level = slog.LevelWarn
	}
	c.log.Log(context.Background(), level, "acme: "+e.Message, attrs...)
	return nil
}

func (c *slogCore) Sync() error { return nil }
