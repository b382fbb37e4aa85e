package cli

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/lease"
	"github.com/berthhq/berth/logs"
	"github.com/berthhq/berth/proxy"
	"github.com/berthhq/berth/runtime"
	"github.com/berthhq/berth/runtime/kubernetes"
	"github.com/berthhq/berth/runtime/process"
	"github.com/berthhq/berth/server"
	"github.com/berthhq/berth/state"
	"github.com/berthhq/berth/store"
	"github.com/berthhq/berth/store/stores"
	"github.com/berthhq/berth/token"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

func init() {
	register("serve", "run Berth for production (API key required)", false, runServe)
}

// serverOptions are the settings shared by `berth serve` and `berth dev`:
// dev is the same server with loopback defaults and no API key.
type serverOptions struct {
	APIAddr        string
	ProxyAddr      string
	BackendAPIAddr string
	PublicURL      string
	DataDir        string
	Runtime        string
	DockerNetwork  string
	Store          string
	Blobs          string
	VolumeRoot     string
	CgroupDir      string
	MaxStateBytes  int64
	History        int
	APIKey         string
	TokenKey       string
	LogLevel       string
	ShutdownGrace  time.Duration
	ProxyGoroutine bool
	NodeID         string
	PeerAddr       string
	Capacity       int
	LeaseTTL       time.Duration
	Kube           kubeOptions // --runtime kubernetes
	Edge           edgeOptions // TLS, hostnames, balancers, limits (edge.go)
	PoolsFile      string
	dev            bool
}

func (o *serverOptions) flags(fs *flag.FlagSet) {
	fs.StringVar(&o.APIAddr, "api-addr", envOr("BERTH_API_ADDR", "127.0.0.1:7070"), "control API listen address (BERTH_API_ADDR)")
	fs.StringVar(&o.ProxyAddr, "proxy-addr", envOr("BERTH_PROXY_ADDR", "127.0.0.1:7080"), "public proxy listen address (BERTH_PROXY_ADDR)")
	fs.StringVar(&o.BackendAPIAddr, "backend-api-addr", envOr("BERTH_BACKEND_API_ADDR", "127.0.0.1:7071"), "backend API listen address (BERTH_BACKEND_API_ADDR)")
	fs.StringVar(&o.PublicURL, "public-url", envOr("BERTH_PUBLIC_URL", ""), "proxy base URL as browsers reach it (BERTH_PUBLIC_URL; default http://<proxy-addr>, localhost for 0.0.0.0 or ::)")
	fs.StringVar(&o.DataDir, "data-dir", envOr("BERTH_DATA_DIR", ".berth"), "where Berth keeps its records, logs and blobs (BERTH_DATA_DIR)")
	fs.StringVar(&o.Runtime, "runtime", envOr("BERTH_RUNTIME", "auto"), "auto, process, docker or kubernetes (BERTH_RUNTIME); auto adds docker when an engine answers")
	fs.StringVar(&o.DockerNetwork, "docker-network", envOr("BERTH_DOCKER_NETWORK", "berth"), "the bridge network containers join, created if missing and removed at stop once empty (BERTH_DOCKER_NETWORK)")
	fs.StringVar(&o.Store, "store", envOr("BERTH_STORE", ""), "records: sqlite:PATH or postgres://… (BERTH_STORE; default sqlite:<data-dir>/berth.db)")
	fs.StringVar(&o.Blobs, "blobs", envOr("BERTH_BLOBS", ""), "saved state: file:DIR, s3://bucket/prefix?endpoint=…, postgres://… (BERTH_BLOBS; default file:<data-dir>/blobs)")
	fs.StringVar(&o.VolumeRoot, "volume-root", envOr("BERTH_VOLUME_ROOT", ""), "where state mode volume gives each key a directory; may be an NFS/EFS mount (BERTH_VOLUME_ROOT; default <data-dir>/state/volumes)")
	fs.StringVar(&o.CgroupDir, "cgroup-dir", envOr("BERTH_CGROUP_DIR", ""), "a delegated cgroup v2 directory; process backends then get memory, CPU and pids limits (BERTH_CGROUP_DIR)")
	fs.Int64Var(&o.MaxStateBytes, "max-state-bytes", 64<<20, "largest state a backend may save")
	fs.IntVar(&o.History, "history", 10, "saves kept per key")
	fs.StringVar(&o.TokenKey, "token-key", envOr("BERTH_TOKEN_KEY", ""), "secret for signing proxy tokens, 32+ bytes (BERTH_TOKEN_KEY; default: generated once into <data-dir>/token.key)")
	fs.StringVar(&o.PoolsFile, "pools", envOr("BERTH_POOLS", ""), "a JSON file of warm pools to create or replace at start, {\"pools\": [{\"name\", \"spawn\", \"min_ready\", \"max\", \"schedule\"}]} (BERTH_POOLS)")
	fs.StringVar(&o.LogLevel, "log-level", envOr("BERTH_LOG_LEVEL", "info"), "debug, info, warn or error (BERTH_LOG_LEVEL)")
	fs.DurationVar(&o.ShutdownGrace, "shutdown-timeout", 60*time.Second, "how long a shutdown waits for backends to stop")
	fs.StringVar(&o.NodeID, "node-id", envOr("BERTH_NODE_ID", ""), "this replica's name among those sharing a PostgreSQL store (BERTH_NODE_ID; default: generated once into <data-dir>/node-id)")
	fs.StringVar(&o.PeerAddr, "peer-addr", envOr("BERTH_PEER_ADDR", ""), "host:port at which the other replicas reach this one's proxy (BERTH_PEER_ADDR; default: --proxy-addr, which must then name a host)")
	fs.IntVar(&o.Capacity, "capacity", 0, "most live backends this replica runs; 0: no limit")
	fs.DurationVar(&o.LeaseTTL, "lease-ttl", lease.TTL, "a replica's lease in the shared store: it stops its backends when cut off for 60% of it, and other replicas take its keys once it expired")
	o.Kube.flags(fs)
	o.Edge.flags(fs, o.dev)
	fs.BoolVar(&o.ProxyGoroutine, "proxy-goroutines", envOr("BERTH_PROXY_GOROUTINES", "") == "1", "serve the proxy with a goroutine per connection instead of its event loops (BERTH_PROXY_GOROUTINES=1): to compare, or to rule the loops out")
}

func runServe(ctx context.Context, args []string, stdio Stdio) error {
	var o serverOptions
	fs := newFlags("serve", "berth serve --api-key KEY [flags]", stdio)
	o.flags(fs.FlagSet)
	fs.StringVar(&o.APIKey, "api-key", envOr("BERTH_API_KEY", ""), "API key clients must send as a Bearer token (BERTH_API_KEY; required)")
	rest, err := fs.parse(args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usagef("unexpected argument %q; berth serve takes only flags (berth serve -h)", rest[0])
	}
	if o.APIKey == "" {
		return usagef("--api-key (or BERTH_API_KEY) is required; use `berth dev` for a local server without one")
	}
	return serve(ctx, &o, stdio, nil)
}

// server is a running Berth: the parts dev needs to print its banner.
type runningServer struct {
	manager *server.Manager
	apiURL  string
	public  string
	runtime []string
}

// serve runs Berth until ctx is done, then stops its backends and returns.
// ready, if set, is called once every listener is up.
func serve(ctx context.Context, o *serverOptions, stdio Stdio, ready func(*runningServer)) error {
	log, err := newLogger(o.LogLevel, stdio.Err)
	if err != nil {
		return err
	}
	if err := o.Edge.validate(); err != nil {
		return err
	}
	pools, err := readPoolsFile(o.PoolsFile) // a mistake in it stops the start at once
	if err != nil {
		return err
	}
	if err := os.MkdirAll(o.DataDir, 0o700); err != nil {
		return fmt.Errorf("create data dir: %w", err)
	}
	if err := ignoreDataDir(o.DataDir); err != nil {
		return err
	}
	st, err := openStore(ctx, o)
	if err != nil {
		return err
	}
	defer st.Close()
	shared := isShared(o)
	if shared && o.TokenKey == "" {
		return usagef("--store %s is shared by replicas, which must sign tokens with one key: set --token-key (or BERTH_TOKEN_KEY) to the same secret of 32+ bytes on every replica", redactURL(o.Store))
	}
	node := "local"
	if shared {
		if err := lease.Scaled(o.LeaseTTL).Validate(); err != nil || o.LeaseTTL < time.Second {
			return usagef("--lease-ttl %s: give at least 1s (default %s)", o.LeaseTTL, lease.TTL)
		}
		if node, err = nodeID(o); err != nil {
			return err
		}
	}

	signer, err := openSigner(o)
	if err != nil {
		return err
	}
	// A replica's reaper is started before its runtimes, which tell it of
	// every process group they start (see reaper.go).
	var reap *reaper
	if shared {
		if reap, err = startReaper(o, lease.Scaled(o.LeaseTTL), log); err != nil {
			return err
		}
	}
	runtimes, err := openRuntimes(ctx, o, log, reap)
	if err != nil {
		return err
	}
	defer func() {
		for _, rt := range runtimes {
			if c, ok := rt.(io.Closer); ok {
				c.Close()
			}
		}
	}()

	// Listen before reconciling so a port clash fails fast, before any
	// backend is touched.
	apiLn, err := net.Listen("tcp", o.APIAddr)
	if err != nil {
		return fmt.Errorf("control API: %w (is another Berth running? use --api-addr)", err)
	}
	proxyLn, err := net.Listen("tcp", o.ProxyAddr)
	if err != nil {
		apiLn.Close()
		return fmt.Errorf("proxy: %w (use --proxy-addr)", err)
	}
	backendLn, err := net.Listen("tcp", o.BackendAPIAddr)
	if err != nil {
		apiLn.Close()
		proxyLn.Close()
		return fmt.Errorf("backend API: %w (use --backend-api-addr)", err)
	}
	edgeLns, err := o.Edge.listen()
	if err != nil {
		apiLn.Close()
		proxyLn.Close()
		backendLn.Close()
		return err
	}
	defer edgeLns.close()
	public := o.PublicURL
	if public == "" && o.Edge.enabled() {
		public = o.Edge.publicURL(edgeLns)
	}
	if public == "" {
		var wildcard bool
		public, wildcard = defaultPublicURL(proxyLn.Addr())
		if wildcard {
			log.Warn("no --public-url: connect URLs name "+public+", which only this machine reaches; set --public-url (BERTH_PUBLIC_URL) to the proxy's address as browsers reach it",
				"proxy_addr", proxyLn.Addr().String())
		}
	}
	urlFor, err := o.Edge.backendURL(signer, public)
	if err != nil {
		return err
	}
	apiURL := "http://" + apiLn.Addr().String()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := server.NewMetrics(reg)
	registerDockerMetrics(reg, runtimes)
	mgr, err := server.New(server.Config{
		Store:     st,
		Runtimes:  runtimes,
		Logs:      logs.New(logs.Config{}),
		Signer:    signer,
		Logger:    log,
		Metrics:   metrics,
		PublicURL: public,
		URLFor:    urlFor,
		APIURL:    apiURL,
		FreePort:  process.FreePort,
		Node:      node,
	})
	if err != nil {
		return err
	}
	reg.MustRegister(mgr.Collector(), mgr.PoolCollector())
	blobs, err := openBlobs(ctx, o, log)
	if err != nil {
		return err
	}
	defer blobs.Close()
	states, err := state.New(state.Config{
		Blobs:         blobs,
		Holders:       mgr,
		Dir:           filepath.Join(o.DataDir, "state"),
		VolumeRoot:    o.VolumeRoot,
		BackendAPIURL: backendAPIURLs(backendLn.Addr().String(), runtimes),
		MaxStateBytes: o.MaxStateBytes,
		Logger:        log.With("component", "state"),
		OnSaveError:   metrics.SaveError,
	})
	if err != nil {
		return err
	}
	defer states.Close()
	mgr.SetStateLayer(states)
	px := proxy.New(proxy.Config{Resolver: mgr, Signer: signer, Logger: log})
	mgr.SetReuseProbeConn(px.Keep)
	if shared {
		peer, err := peerAddr(o, proxyLn.Addr())
		if err != nil {
			return err
		}
		c := server.Cluster{ProxyAddr: peer, APIAddr: apiLn.Addr().String(), Capacity: o.Capacity, LeaseTTL: o.LeaseTTL,
			OnRenew: reap.renewed}
		if runtimes["docker"] != nil {
			instance, err := dockerInstance(o)
			if err != nil {
				return err
			}
			reap.docker(instance)
		}
		if err := mgr.Join(ctx, c); err != nil {
			return err
		}
		log.Info("joined the cluster", "node", node, "peer_addr", peer, "lease", o.LeaseTTL)
	}
	if err := mgr.Reconcile(ctx); err != nil {
		return err
	}

	mux := http.NewServeMux()
	states.Mount(mux)
	var demo func() (*berth.SpawnConfig, error)
	if o.dev {
		demo = demoSpawn
	}
	apiSrv := &http.Server{
		Handler:           server.NewAPI(server.APIConfig{Manager: mgr, APIKey: o.APIKey, Gatherer: reg, Logger: log, Mux: mux, Demo: demo}),
		ReadHeaderTimeout: 10 * time.Second,
		// An idle keep-alive connection is not held forever: connections
		// are accepted before the API key is checked.
		IdleTimeout: 60 * time.Second,
	}
	proxySrv := px.NewServer(proxy.ServerConfig{IdleTimeout: 30 * time.Second, NoEventLoop: o.ProxyGoroutine})
	mgr.SetKeepClaimConn(proxySrv.KeepIdle)

	backendSrv := &http.Server{Handler: states.BackendAPI(), ReadHeaderTimeout: 30 * time.Second, IdleTimeout: 60 * time.Second}

	errC := make(chan error, 6)
	if u, srv, err := dockerBackendAPI(runtimes, backendLn.Addr().(*net.TCPAddr).Port, states.BackendAPI(), errC); err != nil {
		log.Warn("docker backends cannot reach the backend API; their state saves will fail", "err", err)
	} else if srv != nil {
		states.SetBackendAPIURL("docker", u)
		defer srv.Close()
	}
	if runtimes[kubernetes.Name] != nil && o.Kube.BackendAPIURL != "" {
		// Pods reach the backend API through a Service (deploy/kubernetes).
		states.SetBackendAPIURL(kubernetes.Name, o.Kube.BackendAPIURL)
		// Pods share no directory with Berth: mode dir syncs through it.
		states.SetDirSync(kubernetes.Name)
	}
	// Pools start once every runtime's backends can reach the backend API
	// (a claim hands them its state URL; a repeated claim may load from
	// it), and before the control API and the proxy serve.
	go func() { errC <- backendSrv.Serve(backendLn) }()
	if err := mgr.StartPools(ctx, pools); err != nil {
		backendSrv.Close()
		return err
	}
	go func() { errC <- apiSrv.Serve(apiLn) }()
	go func() { errC <- proxySrv.Serve(proxyLn) }()
	var edgeRun *runningEdge
	if o.Edge.enabled() {
		if edgeRun, err = o.Edge.start(ctx, edgeLns, px, signer, blobs, reg, log, errC); err != nil {
			return err
		}
	}
	log.Info("berth is up", "api", apiURL, "proxy", public, "data", o.DataDir, "runtimes", runtimeNames(runtimes))
	if ready != nil {
		ready(&runningServer{manager: mgr, apiURL: apiURL, public: public, runtime: runtimeNames(runtimes)})
	}

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errC:
	}
	log.Info("shutting down: stopping backends", "live", mgr.LiveCount())
	sctx, cancel := context.WithTimeout(context.Background(), o.ShutdownGrace)
	defer cancel()
	if err := mgr.Shutdown(sctx); err != nil {
		log.Error("shutdown", "err", err)
	} else {
		reap.stopped() // every backend stopped: the reaper has nothing left to do
	}
	px.Close()
	if edgeRun != nil {
		edgeRun.Shutdown(sctx)
	}
	apiSrv.Shutdown(sctx)
	proxySrv.Shutdown(sctx)
	backendSrv.Shutdown(sctx)
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return serveErr
	}
	log.Info("stopped")
	return nil
}

// ignoreDataDir keeps the data dir out of Git: it holds the token signing
// key, and berth dev makes it in the working directory, where one careless
// `git add .` would publish it.
func ignoreDataDir(dir string) error {
	path := filepath.Join(dir, ".gitignore")
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	if err := os.WriteFile(path, []byte("# Berth's data: records, saved state and its token signing key. Never commit it.\n*\n"), 0o600); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	return nil
}

func openStore(ctx context.Context, o *serverOptions) (store.Store, error) {
	spec := o.Store
	if spec == "" {
		spec = "sqlite:" + filepath.Join(o.DataDir, "berth.db")
	}
	st, err := stores.Open(ctx, spec)
	if errors.Is(err, stores.ErrUnknown) {
		return nil, usagef("--store: %v", err)
	}
	return st, err
}

// isShared reports whether the store is one several replicas share.
func isShared(o *serverOptions) bool {
	return strings.HasPrefix(o.Store, "postgres://") || strings.HasPrefix(o.Store, "postgresql://")
}

// redactURL drops a URL's password, for messages.
func redactURL(s string) string {
	if u, err := url.Parse(s); err == nil {
		return u.Redacted()
	}
	return s
}

// nodeID is --node-id, or the id generated once into the data dir: a
// replica keeps its name across restarts, so it finds its own backends.
func nodeID(o *serverOptions) (string, error) {
	if o.NodeID != "" {
		if err := berth.ValidateKey(o.NodeID); err != nil {
			return "", usagef("--node-id: %v", err)
		}
		return o.NodeID, nil
	}
	path := filepath.Join(o.DataDir, "node-id")
	b, err := os.ReadFile(path)
	if err == nil && len(bytes.TrimSpace(b)) > 0 {
		return string(bytes.TrimSpace(b)), nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("node id: %w", err)
	}
	var r [6]byte
	rand.Read(r[:])
	id := "n_" + hex.EncodeToString(r[:])
	if err := os.WriteFile(path, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("node id: %w", err)
	}
	return id, nil
}

// peerAddr is where the other replicas reach this one's proxy.
func peerAddr(o *serverOptions, proxy net.Addr) (string, error) {
	if o.PeerAddr != "" {
		if _, _, err := net.SplitHostPort(o.PeerAddr); err != nil {
			return "", usagef("--peer-addr %q: want host:port", o.PeerAddr)
		}
		return o.PeerAddr, nil
	}
	ap, err := netip.ParseAddrPort(proxy.String())
	if err != nil || ap.Addr().IsUnspecified() {
		return "", usagef("--proxy-addr %s names no host the other replicas could reach: set --peer-addr (or BERTH_PEER_ADDR)", proxy)
	}
	return proxy.String(), nil
}

// openSigner loads the token key, generating one into the data dir on first
// use so tokens stay valid across restarts.
func openSigner(o *serverOptions) (*token.Signer, error) {
	key := []byte(o.TokenKey)
	if len(key) == 0 {
		path := filepath.Join(o.DataDir, "token.key")
		var err error
		key, err = os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) {
			key = make([]byte, 32)
			rand.Read(key)
			err = os.WriteFile(path, key, 0o600)
		}
		if err != nil {
			return nil, fmt.Errorf("token key: %w", err)
		}
	}
	s, err := token.NewSigner(key)
	if err != nil {
		return nil, fmt.Errorf("--token-key: %w", err)
	}
	return s, nil
}

func openRuntimes(ctx context.Context, o *serverOptions, log *slog.Logger, reap *reaper) (map[string]runtime.Runtime, error) {
	rts := make(map[string]runtime.Runtime)
	switch o.Runtime {
	case "auto", "process", "docker":
	case "kubernetes":
		k, err := openKubernetes(ctx, o, log)
		if err != nil {
			return nil, err
		}
		return map[string]runtime.Runtime{kubernetes.Name: k}, nil
	default:
		return nil, usagef("--runtime %q: use auto, process, docker or kubernetes", o.Runtime)
	}
	if o.Runtime == "auto" || o.Runtime == "process" {
		p, err := process.New(process.Config{Dir: filepath.Join(o.DataDir, "run"), CgroupDir: o.CgroupDir, Logger: log.With("runtime", "process"),
			DieWithBerth: reap != nil, OnGroup: reap.groupHook()})
		if err != nil {
			return nil, fmt.Errorf("process runtime: %w", err)
		}
		rts["process"] = p
	}
	if o.Runtime == "auto" || o.Runtime == "docker" {
		d, err := openDocker(ctx, o, log)
		switch {
		case err == nil:
			rts["docker"] = d
		case o.Runtime == "docker":
			return nil, fmt.Errorf("docker runtime: %w", err)
		default:
			log.Info("docker runtime not available; image spawns will be refused", "why", err)
		}
	}
	return rts, nil
}

func runtimeNames(rts map[string]runtime.Runtime) []string {
	var names []string
	for _, n := range []string{"process", "docker", "kubernetes"} {
		if rts[n] != nil {
			names = append(names, n)
		}
	}
	return names
}

func newLogger(level string, w io.Writer) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, usagef("--log-level %q: use debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}

// defaultPublicURL is the proxy's URL when --public-url is not given: its
// listening address, or, when that is a wildcard (0.0.0.0, ::) that no
// browser can dial, localhost on its port, with wildcard true.
func defaultPublicURL(addr net.Addr) (string, bool) {
	host, port, err := net.SplitHostPort(addr.String())
	if err != nil || !net.ParseIP(host).IsUnspecified() {
		return "http://" + addr.String(), false
	}
	return "http://" + net.JoinHostPort("localhost", port), true
}
