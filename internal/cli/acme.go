package cli

import (
	"bytes"
	"context"
	"crypto/x509"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/libdns/libdns"

	"github.com/berthhq/berth/blob"
	"github.com/berthhq/berth/edge"
	"github.com/berthhq/berth/token"
)

// acmeOptions configure certificates obtained over ACME.
type acmeOptions struct {
	Email        string
	CA           string
	CARoots      string
	Domains      string
	DNS          string
	DNSResolvers string
	DNSWait      time.Duration
	Profile      string
	RenewCheck   time.Duration
}

func (o *acmeOptions) flags(fs *flag.FlagSet) {
	fs.StringVar(&o.Email, "acme-email", envOr("BERTH_ACME_EMAIL", ""), "obtain and renew the edge's certificates over ACME, with this account email (BERTH_ACME_EMAIL)")
	fs.StringVar(&o.CA, "acme-ca", envOr("BERTH_ACME_CA", certmagic.LetsEncryptProductionCA), "ACME directory URL (BERTH_ACME_CA)")
	fs.StringVar(&o.CARoots, "acme-ca-roots", envOr("BERTH_ACME_CA_ROOTS", ""), "PEM file of roots to trust for the ACME server's own HTTPS, for a private CA (BERTH_ACME_CA_ROOTS)")
	fs.StringVar(&o.Domains, "acme-domains", envOr("BERTH_ACME_DOMAINS", ""), "comma-separated names to obtain certificates for (BERTH_ACME_DOMAINS; default: *.SUFFIX with --acme-dns, else SUFFIX and each backend's host, at their first handshake)")
	fs.StringVar(&o.DNS, "acme-dns", envOr("BERTH_ACME_DNS", ""), "DNS-01 provider, for a wildcard certificate: exec:PROGRAM, run as `PROGRAM present|cleanup FQDN VALUE` (BERTH_ACME_DNS)")
	fs.StringVar(&o.DNSResolvers, "acme-dns-resolvers", envOr("BERTH_ACME_DNS_RESOLVERS", ""), "comma-separated host:port resolvers to find the DNS zone and check propagation (BERTH_ACME_DNS_RESOLVERS; default: the system's)")
	fs.DurationVar(&o.DNSWait, "acme-dns-propagation-timeout", 2*time.Minute, "how long to wait for a DNS-01 record to be visible at the zone's name servers before asking the CA to check it; negative: do not wait")
	fs.StringVar(&o.Profile, "acme-profile", envOr("BERTH_ACME_PROFILE", ""), "certificate profile to ask the CA for, e.g. shortlived (BERTH_ACME_PROFILE)")
	fs.DurationVar(&o.RenewCheck, "acme-renew-check", 10*time.Minute, "how often certificates are checked for renewal")
}

func (o *acmeOptions) on() bool { return o.Email != "" }

func (o *acmeOptions) validate(suffix string) error {
	if !o.on() {
		if o.DNS != "" || o.Domains != "" {
			return usagef("--acme-dns and --acme-domains need --acme-email")
		}
		return nil
	}
	if o.Domains == "" && suffix == "" {
		return usagef("--acme-email needs names: --acme-domains, or --public-host-suffix")
	}
	if o.DNS != "" && !strings.HasPrefix(o.DNS, "exec:") {
		return usagef("--acme-dns %q: want exec:PROGRAM", o.DNS)
	}
	if o.RenewCheck < time.Second {
		return usagef("--acme-renew-check %s: give at least 1s", o.RenewCheck)
	}
	return nil
}

// manager starts ACME for the edge.
func (o *acmeOptions) manager(ctx context.Context, suffix string, httpPort, tlsPort int, signer *token.Signer, blobs blob.Store, log *slog.Logger) (*edge.ACME, error) {
	cfg := edge.ACMEConfig{
		CA: o.CA, Email: o.Email, Storage: edge.NewBlobStorage(blobs), Profile: o.Profile,
		HTTPPort: httpPort, TLSPort: tlsPort, RenewCheck: o.RenewCheck, Logger: log,
	}
	if o.CARoots != "" {
		b, err := os.ReadFile(o.CARoots)
		if err != nil {
			return nil, fmt.Errorf("--acme-ca-roots: %w", err)
		}
		cfg.Roots = x509.NewCertPool()
		if !cfg.Roots.AppendCertsFromPEM(b) {
			return nil, usagef("--acme-ca-roots %s: no PEM certificate in it", o.CARoots)
		}
	}
	suffix = strings.ToLower(strings.Trim(suffix, "."))
	for _, d := range strings.Split(o.Domains, ",") {
		if d = strings.ToLower(strings.TrimSpace(d)); d != "" {
			cfg.Domains = append(cfg.Domains, d)
		}
	}
	if o.DNS != "" {
		cfg.DNS = execDNS(strings.TrimPrefix(o.DNS, "exec:"))
		for _, r := range strings.Split(o.DNSResolvers, ",") {
			if r = strings.TrimSpace(r); r != "" {
				cfg.DNSResolvers = append(cfg.DNSResolvers, r)
			}
		}
		cfg.NoPropagationCheck = o.DNSWait < 0
		cfg.PropagationTimeout = max(0, o.DNSWait)
		if len(cfg.Domains) == 0 {
			// One certificate for every backend's host. (Not the bare
			// suffix too: its DNS-01 record has the same name, and two
			// orders at once would clean up each other's record.)
			cfg.Domains = []string{"*." + suffix}
		}
	} else if suffix != "" {
		if len(cfg.Domains) == 0 {
			cfg.Domains = []string{suffix}
		}
		// Without DNS-01 there is no wildcard: each backend's host gets a
		// certificate on its first visit, and only hosts Berth named.
		// (certmagic obtains even the names in Domains at their first
		// handshake once on-demand is on.)
		named := cfg.Domains
		cfg.OnDemand = func(_ context.Context, name string) error {
			name = strings.ToLower(name)
			if slices.Contains(named, name) {
				return nil
			}
			label, ok := strings.CutSuffix(name, "."+suffix)
			if !ok || strings.Contains(label, ".") {
				return fmt.Errorf("%s is not under %s", name, suffix)
			}
			_, err := signer.BackendOfLabel(label)
			return err
		}
	}
	return edge.NewACME(ctx, cfg)
}

// execDNS is a DNS-01 provider that runs a program, as lego's and acme.sh's
// hooks do, so any DNS host with a command line (or an API and curl) works:
// `PROGRAM present FQDN VALUE` sets the TXT record and `PROGRAM cleanup
// FQDN VALUE` removes it; a non-zero exit is an error.
type execDNS string

func (e execDNS) run(ctx context.Context, action, zone string, recs []libdns.Record) ([]libdns.Record, error) {
	for _, r := range recs {
		rr := r.RR()
		if rr.Type != "TXT" {
			return nil, fmt.Errorf("acme dns: %s records not supported", rr.Type)
		}
		ctx, cancel := context.WithTimeout(ctx, time.Minute)
		var out bytes.Buffer
		cmd := exec.CommandContext(ctx, string(e), action, libdns.AbsoluteName(rr.Name, zone), rr.Data)
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		cancel()
		if err != nil {
			return nil, fmt.Errorf("acme dns: %s %s: %w: %s", e, action, err, bytes.TrimSpace(out.Bytes()))
		}
	}
	return recs, nil
}

func (e execDNS) AppendRecords(ctx context.Context, zone string, recs []libdns.Record) ([]libdns.Record, error) {
	return e.run(ctx, "present", zone, recs)
}

func (e execDNS) DeleteRecords(ctx context.Context, zone string, recs []libdns.Record) ([]libdns.Record, error) {
	return e.run(ctx, "cleanup", zone, recs)
}
