// Package s3 is the blob store in an S3-compatible bucket
// (URL s3://bucket/prefix?endpoint=…&region=…&path_style=true).
//
// Credentials come only from the environment, the way every AWS tool reads
// them — AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (/ AWS_SESSION_TOKEN),
// the shared credentials file (AWS_SHARED_CREDENTIALS_FILE, AWS_PROFILE), or
// the instance's IAM role — never from the URL, which ends up in flags,
// process listings and logs.
//
// Layout under prefix, per key (the key base32-encoded, so no key can
// alias another or name a path on a file-backed server):
//
//	keys/<2 hex>/<base32 key>/manifest.json   fence + history (manifest.Manifest)
//	keys/<2 hex>/<base32 key>/v/<version>     one immutable object per save
//
// Fencing and atomicity rest on S3 conditional writes. A Put first uploads
// the body to a fresh, never-reused v/<version> object (invisible to readers
// until the manifest names it), then replaces the manifest with a PUT that
// carries If-Match: <the ETag it read> (If-None-Match: * when there was
// none). The fence is checked on the manifest the PUT is conditional on, so
// if anything — a Fence by a new holder, another save — changed the
// manifest in between, the server refuses the PUT (412), the store re-reads
// and re-checks, and a stale writer gets ErrFenced. The manifest carries a
// revision counter so its ETag never repeats. Open checks that the server
// really honours If-Match and If-None-Match on PUT (AWS S3 since 2024,
// MinIO, versitygw do) and refuses to use one that does not, because
// without them no fencing is possible.
//
// Bodies stream: a save is uploaded in parts of PartSize (default 8 MiB)
// through one reused buffer; a body smaller than a part goes in one PUT.
// Bodies trimmed from the history are deleted after the commit. A save that
// fails without knowing whether its commit landed leaves its body in place
// (deleting it could break a landed commit); Delete sweeps such leftovers
// once they are a day old.
package s3

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/berthhq/berth/blob"
	"github.com/berthhq/berth/blob/internal/manifest"
)

// Config says which bucket and how to reach it. It holds no credentials.
type Config struct {
	Bucket string
	// Prefix is prepended to every object name ("" or ending in '/').
	Prefix string
	// Endpoint is the server's base URL, e.g. http://127.0.0.1:9000.
	// Empty means AWS S3.
	Endpoint string
	// Region defaults to $AWS_REGION, $AWS_DEFAULT_REGION, then us-east-1.
	Region string
	// PathStyle addresses the bucket as endpoint/bucket rather than
	// bucket.endpoint; most self-hosted servers need it.
	PathStyle bool
	// PartSize is the size of upload parts and so the memory one Put
	// holds. Default 8 MiB; at least 5 MiB (S3's minimum part size).
	PartSize int64
	// Transport, when set, carries the HTTP requests (tests use it to
	// inject failures).
	Transport http.RoundTripper
	// MaxRetries is how often one request is retried on a network error
	// or a 5xx answer before the operation fails; 0 means the client's
	// default (10, with backoff capped at a second).
	MaxRetries int
}

const (
	defaultPartSize = 8 << 20
	minPartSize     = 5 << 20
	// staleOrphan is how old an object under v/ that no manifest lists
	// must be before a sweep takes it for the leftover of a failed save
	// rather than a save about to commit.
	staleOrphan = 24 * time.Hour
	// maxAttempts bounds the optimistic retries of one manifest update.
	maxAttempts = 64
)

// ParseURL reads s3://bucket/prefix?endpoint=URL&region=R&path_style=true&part_size_mb=N.
func ParseURL(rawURL string) (Config, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return Config{}, fmt.Errorf("s3: %w", err)
	}
	if u.Scheme != "s3" {
		return Config{}, fmt.Errorf("s3: URL %q: scheme must be s3", rawURL)
	}
	if u.User != nil {
		return Config{}, errors.New("s3: URL carries credentials; give them as AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or in the shared credentials file instead")
	}
	cfg := Config{Bucket: u.Host, Prefix: strings.Trim(u.Path, "/")}
	if cfg.Bucket == "" {
		return Config{}, fmt.Errorf("s3: URL %q names no bucket", rawURL)
	}
	if cfg.Prefix != "" {
		cfg.Prefix += "/"
	}
	for name, vals := range u.Query() {
		v := vals[len(vals)-1]
		switch name {
		case "endpoint":
			cfg.Endpoint = v
		case "region":
			cfg.Region = v
		case "path_style", "force_path_style":
			if cfg.PathStyle, err = strconv.ParseBool(v); err != nil {
				return Config{}, fmt.Errorf("s3: URL query path_style=%q: %w", v, err)
			}
		case "part_size_mb":
			mb, err := strconv.Atoi(v)
			if err != nil || mb <= 0 {
				return Config{}, fmt.Errorf("s3: URL query part_size_mb=%q: want a positive number", v)
			}
			cfg.PartSize = int64(mb) << 20
		default:
			lower := strings.ToLower(name)
			if strings.Contains(lower, "key") || strings.Contains(lower, "secret") || strings.Contains(lower, "token") || strings.Contains(lower, "password") {
				return Config{}, fmt.Errorf("s3: URL query %q: credentials are never read from the URL; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or use the shared credentials file", name)
			}
			return Config{}, fmt.Errorf("s3: URL query %q: unknown; use endpoint, region, path_style, part_size_mb", name)
		}
	}
	return cfg, nil
}

// Store is the S3 blob store.
type Store struct {
	cfg    Config
	client *minio.Client
	core   minio.Core
	opts   blob.Options
	bufs   sync.Pool // *[]byte of cfg.PartSize

	// checked is set once the bucket and the server's conditional writes
	// are verified. An unreachable server at New is not fatal (saves spool
	// on Berth's disk meanwhile), but no write goes out before the check.
	checkMu sync.Mutex
	checked bool
}

var _ blob.Store = (*Store)(nil)

// Open opens the store an s3:// URL names. See ParseURL and New.
func Open(ctx context.Context, rawURL string, opts blob.Options) (*Store, error) {
	cfg, err := ParseURL(rawURL)
	if err != nil {
		return nil, err
	}
	return New(ctx, cfg, opts)
}

// New connects to the bucket, checks that it exists and that the server
// honours conditional writes, and returns the store.
func New(ctx context.Context, cfg Config, opts blob.Options) (*Store, error) {
	if cfg.Bucket == "" {
		return nil, errors.New("s3: no bucket given")
	}
	if cfg.PartSize == 0 {
		cfg.PartSize = defaultPartSize
	}
	if cfg.PartSize < minPartSize {
		return nil, fmt.Errorf("s3: part size %d is under S3's minimum of 5 MiB", cfg.PartSize)
	}
	if cfg.Region == "" {
		cfg.Region = firstEnv("AWS_REGION", "AWS_DEFAULT_REGION")
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	host, secure := "s3.amazonaws.com", true
	if cfg.Endpoint != "" {
		u, err := url.Parse(cfg.Endpoint)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			return nil, fmt.Errorf("s3: endpoint %q: want http://host[:port] or https://host[:port]", cfg.Endpoint)
		}
		host, secure = u.Host, u.Scheme == "https"
	}
	lookup := minio.BucketLookupAuto
	if cfg.PathStyle {
		lookup = minio.BucketLookupPath
	}
	client, err := minio.New(host, &minio.Options{
		Creds: credentials.NewChainCredentials([]credentials.Provider{
			&credentials.EnvAWS{},
			&credentials.FileAWSCredentials{},
			&credentials.IAM{},
		}),
		Secure:       secure,
		Region:       cfg.Region,
		BucketLookup: lookup,
		Transport:    cfg.Transport,
		MaxRetries:   cfg.MaxRetries,
	})
	if err != nil {
		return nil, fmt.Errorf("s3: %w", err)
	}
	s := &Store{cfg: cfg, client: client, core: minio.Core{Client: client}, opts: opts.WithDefaults()}
	s.bufs.New = func() any { b := make([]byte, cfg.PartSize); return &b }
	if err := s.check(ctx); err != nil {
		if !unreachable(err) {
			return nil, err
		}
		s.opts.Logger.Warn("S3 server unreachable; starting anyway, saves wait on local disk until it answers", "at", s.where(), "err", err)
	}
	return s, nil
}

// check verifies, once, that the bucket exists and the server honours
// conditional writes.
func (s *Store) check(ctx context.Context) error {
	s.checkMu.Lock()
	defer s.checkMu.Unlock()
	if s.checked {
		return nil
	}
	ok, err := s.client.BucketExists(ctx, s.cfg.Bucket)
	if err != nil {
		return fmt.Errorf("s3: bucket %s at %s: %w", s.cfg.Bucket, s.where(), err)
	}
	if !ok {
		return fmt.Errorf("s3: bucket %s does not exist at %s", s.cfg.Bucket, s.where())
	}
	if err := s.probeConditionalWrites(ctx); err != nil {
		return err
	}
	s.checked = true
	return nil
}

// unreachable reports an error that never got an S3 answer (connection
// refused, timeout): the server may come back.
func unreachable(err error) bool {
	var ne net.Error
	return errors.As(err, &ne)
}

func firstEnv(names ...string) string {
	for _, n := range names {
		if v := os.Getenv(n); v != "" {
			return v
		}
	}
	return ""
}

func (s *Store) where() string {
	if s.cfg.Endpoint != "" {
		return s.cfg.Endpoint
	}
	return "AWS S3"
}

// Close is a no-op: the client holds only idle HTTP connections.
func (s *Store) Close() error { return nil }

// probeConditionalWrites checks, on a scratch object, that the server
// refuses a PUT whose If-None-Match or If-Match does not hold. A server that
// ignores them would let a stale writer overwrite a newer holder's state.
func (s *Store) probeConditionalWrites(ctx context.Context) error {
	name := s.cfg.Prefix + "probe/" + randomHex()
	defer s.client.RemoveObject(context.WithoutCancel(ctx), s.cfg.Bucket, name, minio.RemoveObjectOptions{})
	put := func(body string, cond func(*minio.PutObjectOptions)) (minio.UploadInfo, error) {
		opts := minio.PutObjectOptions{ContentType: "text/plain"}
		cond(&opts)
		return s.core.PutObject(ctx, s.cfg.Bucket, name, strings.NewReader(body), int64(len(body)), "", "", opts)
	}
	unsupported := func(what string) error {
		return fmt.Errorf("s3: the server at %s does not honour %s on PUT; Berth needs S3 conditional writes to fence saves and cannot use this server", s.where(), what)
	}
	first, err := put("1", func(o *minio.PutObjectOptions) { o.SetMatchETagExcept("*") })
	if err != nil {
		return fmt.Errorf("s3: probing conditional writes at %s: %w", s.where(), err)
	}
	if _, err := put("2", func(o *minio.PutObjectOptions) { o.SetMatchETagExcept("*") }); !isPrecondition(err) {
		if err != nil {
			return fmt.Errorf("s3: probing If-None-Match at %s: %w", s.where(), err)
		}
		return unsupported("If-None-Match: *")
	}
	if _, err := put("3", func(o *minio.PutObjectOptions) { o.SetMatchETag("00000000000000000000000000000000") }); !isPrecondition(err) {
		if err != nil {
			return fmt.Errorf("s3: probing If-Match at %s: %w", s.where(), err)
		}
		return unsupported("If-Match")
	}
	if _, err := put("4", func(o *minio.PutObjectOptions) { o.SetMatchETag(trimETag(first.ETag)) }); err != nil {
		return fmt.Errorf("s3: the server at %s refuses If-Match with the object's own ETag: %w", s.where(), err)
	}
	return nil
}

func (s *Store) keyPrefix(key string) string {
	return s.cfg.Prefix + "keys/" + manifest.KeyPath(key) + "/"
}

func (s *Store) manifestName(key string) string { return s.keyPrefix(key) + "manifest.json" }

func (s *Store) dataName(key, version string) string { return s.keyPrefix(key) + "v/" + version }

func isNotFound(err error) bool {
	r := minio.ToErrorResponse(err)
	return r.Code == "NoSuchKey" || (r.StatusCode == http.StatusNotFound && r.Code != "NoSuchBucket")
}

// isPrecondition reports a conditional write the server refused: 412, or
// 409 ConditionalRequestConflict (AWS, when two conditional writes race).
func isPrecondition(err error) bool {
	r := minio.ToErrorResponse(err)
	return r.StatusCode == http.StatusPreconditionFailed || r.Code == "PreconditionFailed" ||
		r.Code == "ConditionalRequestConflict"
}

func trimETag(etag string) string { return strings.Trim(etag, `"`) }

// readManifest returns key's manifest and its ETag ("" when there is none).
func (s *Store) readManifest(ctx context.Context, key string) (*manifest.Manifest, string, error) {
	rc, oi, _, err := s.core.GetObject(ctx, s.cfg.Bucket, s.manifestName(key), minio.GetObjectOptions{})
	if isNotFound(err) {
		return manifest.New(key), "", nil
	}
	if err != nil {
		return nil, "", fmt.Errorf("s3: read manifest of %q: %w", key, err)
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, 4<<20))
	if err != nil {
		return nil, "", fmt.Errorf("s3: read manifest of %q: %w", key, err)
	}
	m, err := manifest.Decode(key, data)
	if err != nil {
		return nil, "", fmt.Errorf("s3: %w", err)
	}
	etag := trimETag(oi.ETag)
	if etag == "" {
		return nil, "", fmt.Errorf("s3: manifest of %q has no ETag; conditional writes need one", key)
	}
	return m, etag, nil
}

// readResult is a manifest as read, with the ETag a write must match.
type readResult struct {
	m    *manifest.Manifest
	etag string
}

// errRefused: the server refused a conditional manifest write because the
// manifest changed since it was read.
var errRefused = errors.New("manifest changed concurrently")

// writeManifest replaces key's manifest only if it still has etag (or, for
// etag "", only if there is none).
func (s *Store) writeManifest(ctx context.Context, key string, m *manifest.Manifest, etag string) error {
	data := m.Encode()
	opts := minio.PutObjectOptions{ContentType: "application/json"}
	if etag == "" {
		opts.SetMatchETagExcept("*")
	} else {
		opts.SetMatchETag(etag)
	}
	_, err := s.core.PutObject(ctx, s.cfg.Bucket, s.manifestName(key), bytes.NewReader(data), int64(len(data)), "", "", opts)
	if isPrecondition(err) {
		return errRefused
	}
	if err != nil {
		return fmt.Errorf("s3: write manifest of %q: %w", key, err)
	}
	return nil
}

// update applies change to key's manifest with optimistic concurrency:
// read, change, write conditionally, and start over when the server
// refuses. change returns write=false to leave the manifest as it is.
// When first is not nil it is the manifest as just read, with its ETag, and
// saves the first read.
func (s *Store) update(ctx context.Context, key string, first *readResult, change func(m *manifest.Manifest) (write bool, err error)) (err error) {
	for attempt := 1; ; attempt++ {
		var m *manifest.Manifest
		var etag string
		if attempt == 1 && first != nil {
			m, etag = first.m, first.etag
		} else if m, etag, err = s.readManifest(ctx, key); err != nil {
			return err
		}
		write, err := change(m)
		if err != nil || !write {
			return err
		}
		err = s.writeManifest(ctx, key, m, etag)
		if err == nil || !errors.Is(err, errRefused) {
			return err
		}
		if attempt == maxAttempts {
			return fmt.Errorf("s3: update manifest of %q: %w %d times in a row; giving up", key, errRefused, attempt)
		}
		// Jittered backoff, so racing writers spread out.
		d := time.Duration(mrand.Int64N(int64(min(attempt, 20)) * int64(5*time.Millisecond)))
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// Get opens key's current state.
func (s *Store) Get(ctx context.Context, key string) (io.ReadCloser, blob.Info, error) {
	if err := blob.ValidateKey(key); err != nil {
		return nil, blob.Info{}, err
	}
	// The version read from the manifest may be trimmed by a concurrent
	// Put before its body is opened; the manifest has moved on, so read it
	// again.
	for attempt := 0; ; attempt++ {
		m, _, err := s.readManifest(ctx, key)
		if err != nil {
			return nil, blob.Info{}, err
		}
		info, ok := m.Current()
		if !ok {
			return nil, blob.Info{}, fmt.Errorf("s3: get %q: %w", key, blob.ErrNotFound)
		}
		rc, _, _, err := s.core.GetObject(ctx, s.cfg.Bucket, s.dataName(key, info.Version), minio.GetObjectOptions{})
		if isNotFound(err) && attempt < 10 {
			continue
		}
		if err != nil {
			return nil, blob.Info{}, fmt.Errorf("s3: get %q version %s: %w", key, info.Version, err)
		}
		return rc, info, nil
	}
}

// GetVersion opens one save of key.
func (s *Store) GetVersion(ctx context.Context, key, version string) (io.ReadCloser, blob.Info, error) {
	if err := blob.ValidateKey(key); err != nil {
		return nil, blob.Info{}, err
	}
	if !blob.ValidVersion(version) {
		return nil, blob.Info{}, fmt.Errorf("s3: get %q version %q: %w", key, version, blob.ErrNotFound)
	}
	m, _, err := s.readManifest(ctx, key)
	if err != nil {
		return nil, blob.Info{}, err
	}
	info, ok := m.Find(version)
	if !ok {
		return nil, blob.Info{}, fmt.Errorf("s3: get %q version %q: %w", key, version, blob.ErrNotFound)
	}
	rc, _, _, err := s.core.GetObject(ctx, s.cfg.Bucket, s.dataName(key, version), minio.GetObjectOptions{})
	if isNotFound(err) {
		return nil, blob.Info{}, fmt.Errorf("s3: get %q version %q: %w", key, version, blob.ErrNotFound)
	}
	if err != nil {
		return nil, blob.Info{}, fmt.Errorf("s3: get %q version %q: %w", key, version, err)
	}
	return rc, info, nil
}

// Put uploads r as a new version object, then commits it with a
// conditional manifest write.
func (s *Store) Put(ctx context.Context, key string, fence int64, r io.Reader) (blob.Info, error) {
	if err := blob.ValidateKey(key); err != nil {
		return blob.Info{}, err
	}
	if err := s.check(ctx); err != nil {
		return blob.Info{}, err
	}
	// Refuse a doomed write before uploading it. Only an optimisation: the
	// check that counts is the one the conditional write is made on.
	m, etag, err := s.readManifest(ctx, key)
	if err != nil {
		return blob.Info{}, err
	}
	if err := m.Check(fence); err != nil {
		return blob.Info{}, err
	}
	now := time.Now().UTC().Truncate(time.Microsecond)
	info := blob.Info{Key: key, Version: blob.NewVersion(now), Fence: fence, SavedAt: now}
	name := s.dataName(key, info.Version)
	info.Size, info.SHA256, err = s.upload(ctx, name, r)
	if err != nil {
		s.remove(ctx, key, name)
		return blob.Info{}, fmt.Errorf("s3: put %q: %w", key, err)
	}
	// The manifest read above is usually still current: try it first.
	return s.commit(ctx, info, &readResult{m, etag})
}

// commit makes the uploaded version info current.
func (s *Store) commit(ctx context.Context, info blob.Info, first *readResult) (blob.Info, error) {
	var trimmed []string
	fenced := false
	err := s.update(ctx, info.Key, first, func(m *manifest.Manifest) (bool, error) {
		if m.Has(info.Version) {
			// The previous attempt landed though its answer was lost;
			// trimmed is still what that attempt trimmed.
			return false, nil
		}
		var err error
		trimmed, err = m.Commit(info, s.opts.History)
		fenced = err != nil
		return true, err
	})
	switch {
	case err == nil:
	case fenced:
		// Refused on a manifest that does not name the body: garbage.
		s.remove(ctx, info.Key, s.dataName(info.Key, info.Version))
		return blob.Info{}, err
	default:
		// A lost answer, a failed read, a refusal that may have followed
		// our own landed write (the client retries): look. If the
		// manifest names the body, the save is committed. If not, leave
		// the body: a write of ours might still be in flight, and an
		// orphan only costs space until Delete sweeps it.
		m, _, rerr := s.readManifest(context.WithoutCancel(ctx), info.Key)
		if rerr != nil || !m.Has(info.Version) {
			return blob.Info{}, err
		}
	}
	for _, v := range trimmed {
		s.remove(ctx, info.Key, s.dataName(info.Key, v))
	}
	return info, nil
}

// remove deletes an object that no manifest needs. Failure only wastes
// space (a later sweep retries), so it is logged, not returned. It runs
// even when ctx has ended, since the caller may be cleaning up after that.
func (s *Store) remove(ctx context.Context, key, name string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := s.client.RemoveObject(ctx, s.cfg.Bucket, name, minio.RemoveObjectOptions{}); err != nil && !isNotFound(err) {
		s.opts.Logger.Warn("s3 blob store: remove unneeded object", "key", key, "object", name, "err", err)
	}
}

// upload streams r to the object name and returns its size and hex SHA-256.
// It holds one PartSize buffer, whatever the size of the body.
func (s *Store) upload(ctx context.Context, name string, r io.Reader) (int64, string, error) {
	bp := s.bufs.Get().(*[]byte)
	defer s.bufs.Put(bp)
	buf := *bp
	h := sha256.New()
	opts := minio.PutObjectOptions{ContentType: "application/octet-stream"}

	n, err := io.ReadFull(blob.ContextReader(ctx, r), buf)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		// Smaller than a part: one PUT. Its SHA-256 is the payload hash
		// the request is signed with, so the client need not hash again.
		h.Write(buf[:n])
		sum := hex.EncodeToString(h.Sum(nil))
		if _, err := s.core.PutObject(ctx, s.cfg.Bucket, name, bytes.NewReader(buf[:n]), int64(n), "", sum, opts); err != nil {
			return 0, "", err
		}
		return int64(n), sum, nil
	}
	if err != nil {
		return 0, "", err
	}

	uploadID, err := s.core.NewMultipartUpload(ctx, s.cfg.Bucket, name, opts)
	if err != nil {
		return 0, "", err
	}
	completed := false
	defer func() {
		if !completed {
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			s.core.AbortMultipartUpload(actx, s.cfg.Bucket, name, uploadID)
		}
	}()
	var parts []minio.CompletePart
	var total int64
	for part := 1; n > 0; part++ {
		h.Write(buf[:n])
		total += int64(n)
		p, err := s.core.PutObjectPart(ctx, s.cfg.Bucket, name, uploadID, part, bytes.NewReader(buf[:n]), int64(n), minio.PutObjectPartOptions{})
		if err != nil {
			return 0, "", err
		}
		parts = append(parts, minio.CompletePart{PartNumber: part, ETag: p.ETag})
		n, err = io.ReadFull(blob.ContextReader(ctx, r), buf)
		if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
			return 0, "", err
		}
	}
	if _, err := s.core.CompleteMultipartUpload(ctx, s.cfg.Bucket, name, uploadID, parts, opts); err != nil {
		return 0, "", err
	}
	completed = true
	return total, hex.EncodeToString(h.Sum(nil)), nil
}

// Fence raises key's fence.
func (s *Store) Fence(ctx context.Context, key string, fence int64) error {
	if err := blob.ValidateKey(key); err != nil {
		return err
	}
	if err := s.check(ctx); err != nil {
		return err
	}
	err := s.update(ctx, key, nil, func(m *manifest.Manifest) (bool, error) {
		return m.RaiseFence(fence)
	})
	return err
}

// Versions lists key's saves, newest first.
func (s *Store) Versions(ctx context.Context, key string) ([]blob.Info, error) {
	if err := blob.ValidateKey(key); err != nil {
		return nil, err
	}
	m, _, err := s.readManifest(ctx, key)
	if err != nil {
		return nil, err
	}
	return append([]blob.Info{}, m.Versions...), nil
}

// Restore copies an earlier save to a new version object on the server,
// then commits it like a Put.
func (s *Store) Restore(ctx context.Context, key, version string, fence int64) (blob.Info, error) {
	if err := blob.ValidateKey(key); err != nil {
		return blob.Info{}, err
	}
	if err := s.check(ctx); err != nil {
		return blob.Info{}, err
	}
	if !blob.ValidVersion(version) {
		return blob.Info{}, fmt.Errorf("s3: restore %q version %q: %w", key, version, blob.ErrNotFound)
	}
	m, etag, err := s.readManifest(ctx, key)
	if err != nil {
		return blob.Info{}, err
	}
	old, ok := m.Find(version)
	if !ok {
		return blob.Info{}, fmt.Errorf("s3: restore %q version %q: %w", key, version, blob.ErrNotFound)
	}
	if err := m.Check(fence); err != nil {
		return blob.Info{}, err
	}
	now := time.Now().UTC().Truncate(time.Microsecond)
	info := blob.Info{Key: key, Version: blob.NewVersion(now), Size: old.Size, SHA256: old.SHA256, Fence: fence, SavedAt: now}
	name := s.dataName(key, info.Version)
	_, err = s.core.CopyObject(ctx, s.cfg.Bucket, s.dataName(key, version), s.cfg.Bucket, name, nil,
		minio.CopySrcOptions{}, minio.PutObjectOptions{})
	if isNotFound(err) {
		return blob.Info{}, fmt.Errorf("s3: restore %q version %q: %w", key, version, blob.ErrNotFound)
	}
	if err != nil {
		s.remove(ctx, key, name)
		return blob.Info{}, fmt.Errorf("s3: restore %q version %q: %w", key, version, err)
	}
	return s.commit(ctx, info, &readResult{m, etag})
}

// Delete empties key's history (keeping its fence) and removes the bodies,
// and any leftover of failed saves.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := blob.ValidateKey(key); err != nil {
		return err
	}
	var removed []string
	err := s.update(ctx, key, nil, func(m *manifest.Manifest) (bool, error) {
		if len(m.Versions) == 0 {
			return false, nil
		}
		removed = m.Clear()
		return true, nil
	})
	if err != nil {
		return err
	}
	for _, v := range removed {
		s.remove(ctx, key, s.dataName(key, v))
	}
	return s.sweep(ctx, key)
}

// sweep removes objects under key's v/ that the manifest does not list and
// that are too old to belong to a save still on its way to commit.
func (s *Store) sweep(ctx context.Context, key string) error {
	m, _, err := s.readManifest(ctx, key)
	if err != nil {
		return err
	}
	prefix := s.keyPrefix(key) + "v/"
	for oi := range s.client.ListObjectsIter(ctx, s.cfg.Bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if oi.Err != nil {
			return fmt.Errorf("s3: list versions of %q: %w", key, oi.Err)
		}
		v := strings.TrimPrefix(oi.Key, prefix)
		if !m.Has(v) && time.Since(oi.LastModified) > staleOrphan {
			s.remove(ctx, key, oi.Key)
		}
	}
	return nil
}

func randomHex() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
