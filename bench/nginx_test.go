package bench

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berthhq/berth/proxy"
	"github.com/berthhq/berth/token"
)

// captureBackend answers every request 200 and passes each request head it
// read, verbatim, to heads.
func captureBackend(t *testing.T) (addr string, heads <-chan string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
	)
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close() // a proxy's idle keep-alive connection would hold its goroutine
		}
	})
	ch := make(chan string, 64)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					var head strings.Builder
					for {
						line, err := br.ReadString('\n')
						if err != nil {
							return
						}
						head.WriteString(line)
						if line == "\r\n" {
							break
						}
					}
					select {
					case ch <- head.String():
					default:
					}
					if _, err := c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String(), ch
}

type staticResolver struct{ route proxy.Route }

func (r staticResolver) Resolve(context.Context, string) (proxy.Route, error) { return r.route, nil }

// headThrough sends a GET of /x with Host app.example through the proxy at
// addr (path prefix prefix) and returns the head the backend received.
func headThrough(t *testing.T, addr, prefix string, heads <-chan string) string {
	t.Helper()
	for {
		select {
		case <-heads: // the proxy's own checks, earlier requests
			continue
		default:
		}
		break
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET %s/x HTTP/1.1\r\nHost: app.example\r\n\r\n", prefix)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	status, _, err := readResponse(bufio.NewReader(c))
	if err != nil || status != 200 {
		t.Fatalf("GET through %s: status %d, %v", addr, status, err)
	}
	select {
	case h := <-heads:
		return h
	case <-time.After(10 * time.Second):
		t.Fatalf("the backend saw no request through %s", addr)
		return ""
	}
}

// TestNginxConfig_SendsBerthsHeaders: the throughput scenario is fair only
// if the backend parses the same request behind nginx as behind Berth's
// proxy. The head nginx forwards must equal the one Berth's proxy
// forwards, but for the secret's value, whose length must match.
func TestNginxConfig_SendsBerthsHeaders(t *testing.T) {
	if _, err := findNginx(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("nginx is required in CI: %v", err)
		}
		t.Skip(err)
	}
	upstream, heads := captureBackend(t)
	const backendID = "bk_abcdefghijklmnop"
	secret := strings.Repeat("5", secretLen)

	signer, err := token.NewSigner([]byte(strings.Repeat("k", 32)))
	if err != nil {
		t.Fatal(err)
	}
	p := proxy.New(proxy.Config{
		Resolver: staticResolver{proxy.Route{BackendID: backendID, Addr: upstream, Secret: secret}},
		Signer:   signer,
	})
	srv := p.NewServer(proxy.ServerConfig{})
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(pl)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	tok := signer.Issue(backendID, liveUser, time.Now().Add(time.Hour))
	berthHead := headThrough(t, pl.Addr().String(), "/"+tok, heads)

	e := &env{dir: t.TempDir(), log: t.Logf, verbose: t.Logf}
	ng, err := e.startNginx(t.Context(), &liveBackend{id: backendID, direct: upstream})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ng.stop)
	nginxHead := headThrough(t, ng.addr, "", heads)

	// The secret is the one value nginx cannot know: same length, then
	// the heads must be the same bytes.
	want := "X-Berth-Secret: " + secret + "\r\n"
	if !strings.Contains(berthHead, want) {
		t.Fatalf("Berth's proxy sent no %q:\n%s", want, berthHead)
	}
	lines := strings.Split(nginxHead, "\r\n")
	i := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, "X-Berth-Secret: ") })
	if i < 0 || len(lines[i]) != len(want)-2 {
		t.Fatalf("nginx sent no X-Berth-Secret of the secret's length:\n%s", nginxHead)
	}
	lines[i] = strings.TrimSuffix(want, "\r\n")
	if got := strings.Join(lines, "\r\n"); got != berthHead {
		t.Errorf("the backend gets different heads\nbehind Berth:\n%s\nbehind nginx:\n%s", berthHead, nginxHead)
	}
}
