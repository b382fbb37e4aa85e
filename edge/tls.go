package edge

import (
	"crypto/tls"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// TLSConfig returns the edge's TLS settings around getCert: TLS 1.2 with
// ECDHE and AEAD suites only (AES-GCM, ChaCha20-Poly1305), TLS 1.3, and
// ALPN offering HTTP/2 then HTTP/1.1. Browsers open WebSockets on an
// HTTP/1.1 connection of their own: Go's HTTP/2 server does not offer
// RFC 8441's extended CONNECT by default.
func TLSConfig(getCert func(*tls.ClientHelloInfo) (*tls.Certificate, error)) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		CipherSuites: []uint16{ // TLS 1.2 only; 1.3's are all AEAD
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
			tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
		},
		NextProtos:     []string{"h2", "http/1.1"},
		GetCertificate: getCert,
	}
}

// CertFiles serves a certificate and key from PEM files, and loads them
// again when either file changes (a renewal by certbot or cert-manager),
// looking at most every few seconds. A handshake takes the certificate
// without a lock: the one that finds the files due for a look makes it.
type CertFiles struct {
	cert, key string
	every     time.Duration // between looks at the files

	cur  atomic.Pointer[tls.Certificate]
	next atomic.Int64 // when the files are due for a look (unix ns)
	mu   sync.Mutex   // held by the handshake that looks; guards mod
	mod  [2]time.Time
}

// LoadCertFiles loads the pair once, so a bad pair fails at startup.
func LoadCertFiles(certFile, keyFile string) (*CertFiles, error) {
	c := &CertFiles{cert: certFile, key: keyFile, every: certCheckEvery}
	if err := c.load(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *CertFiles) load() error {
	m0, err0 := os.Stat(c.cert)
	m1, err1 := os.Stat(c.key)
	if err0 != nil || err1 != nil {
		return fmt.Errorf("edge: certificate files: %v", firstErr(err0, err1))
	}
	pair, err := tls.LoadX509KeyPair(c.cert, c.key)
	if err != nil {
		return fmt.Errorf("edge: certificate %s and key %s: %w", c.cert, c.key, err)
	}
	c.cur.Store(&pair)
	c.mod = [2]time.Time{m0.ModTime(), m1.ModTime()}
	return nil
}

const certCheckEvery = 5 * time.Second

// GetCertificate is for tls.Config.GetCertificate.
func (c *CertFiles) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if now := time.Now().UnixNano(); now >= c.next.Load() && c.mu.TryLock() {
		if now >= c.next.Load() {
			c.next.Store(now + int64(c.every))
			m0, err0 := os.Stat(c.cert)
			m1, err1 := os.Stat(c.key)
			if err0 == nil && err1 == nil && (!m0.ModTime().Equal(c.mod[0]) || !m1.ModTime().Equal(c.mod[1])) {
				// A pair caught half written fails to load: keep serving
				// the old one and try again at the next look.
				_ = c.load()
			}
		}
		c.mu.Unlock()
	}
	return c.cur.Load(), nil
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
