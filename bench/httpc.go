package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// rawClient is the bench's own HTTP/1.1 client: one keep-alive connection,
// one pre-built request sent again and again, bodies read and dropped. It
// does far less than net/http, so that latencies are the server's, and so
// that as an in-process load generator it leaves the CPU to the server.
type rawClient struct {
	addr string
	req  []byte
	// deadline, if set, bounds every connection, so a stuck server cannot
	// hang the bench.
	deadline time.Time
	c        net.Conn
	br       *bufio.Reader
}

func newRawClient(addr string, req []byte) *rawClient {
	return &rawClient{addr: addr, req: req}
}

// getRequest is a keep-alive GET.
func getRequest(host, path string) []byte {
	return []byte("GET " + path + " HTTP/1.1\r\nHost: " + host + "\r\nUser-Agent: berth-bench\r\n\r\n")
}

// postRequest is a keep-alive POST of a JSON body.
func postRequest(host, path, auth string, body []byte) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "POST %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: berth-bench\r\nAuthorization: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", path, host, auth, len(body))
	b.Write(body)
	return b.Bytes()
}

// Do sends the request and reads the whole response, dialling first when
// there is no connection. After an error the connection is closed and the
// next Do dials again.
func (rc *rawClient) Do() (status int, err error) {
	if rc.c == nil {
		c, err := net.DialTimeout("tcp", rc.addr, 5*time.Second)
		if err != nil {
			return 0, err
		}
		if !rc.deadline.IsZero() {
			c.SetDeadline(rc.deadline)
		}
		rc.c, rc.br = c, bufio.NewReaderSize(c, 16<<10)
	}
	if _, err := rc.c.Write(rc.req); err != nil {
		rc.Close()
		return 0, err
	}
	status, keep, err := readResponse(rc.br)
	if err != nil || !keep {
		rc.Close()
	}
	return status, err
}

func (rc *rawClient) Close() {
	if rc.c != nil {
		rc.c.Close()
		rc.c = nil
	}
}

var errBadResponse = errors.New("malformed HTTP response")

// readResponse reads one response and discards its body. keep reports
// whether the connection may carry another request.
func readResponse(br *bufio.Reader) (status int, keep bool, err error) {
	line, err := br.ReadSlice('\n')
	if err != nil {
		return 0, false, err
	}
	// "HTTP/1.1 200 OK"
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) {
		return 0, false, errBadResponse
	}
	status, err = strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, false, errBadResponse
	}
	keep = line[7] == '1'
	length, chunked := int64(-1), false
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return 0, false, err
		}
		if len(line) <= 2 {
			break
		}
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return 0, false, errBadResponse
		}
		v = bytes.TrimSpace(v)
		switch {
		case bytes.EqualFold(k, []byte("Content-Length")):
			length, err = strconv.ParseInt(string(v), 10, 64)
			if err != nil {
				return 0, false, errBadResponse
			}
		case bytes.EqualFold(k, []byte("Transfer-Encoding")):
			chunked = bytes.EqualFold(v, []byte("chunked"))
		case bytes.EqualFold(k, []byte("Connection")):
			if bytes.EqualFold(v, []byte("close")) {
				keep = false
			}
		}
	}
	switch {
	case status == 204 || status == 304 || status < 200:
	case chunked:
		err = discardChunked(br)
	case length >= 0:
		_, err = br.Discard(int(length))
	default:
		_, err = io.Copy(io.Discard, br) // body ends at close
		keep = false
	}
	return status, keep, err
}

func discardChunked(br *bufio.Reader) error {
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return err
		}
		hex, _, _ := bytes.Cut(bytes.TrimSpace(line), []byte(";"))
		n, err := strconv.ParseInt(string(hex), 16, 64)
		if err != nil {
			return errBadResponse
		}
		if n == 0 {
			for { // trailers, then the blank line
				line, err := br.ReadSlice('\n')
				if err != nil {
					return err
				}
				if len(line) <= 2 {
					return nil
				}
			}
		}
		if _, err := br.Discard(int(n) + 2); err != nil {
			return err
		}
	}
}

// loadResult is what a load generator measured.
type loadResult struct {
	Requests float64 // completed 2xx responses per second
	Non2xx   int64
	Errors   int64
	// GenCPU is the CPU time wrk used (user and system); zero for the
	// in-process generator, whose CPU is the bench's own.
	GenCPU time.Duration
}

// loadGen runs conns keep-alive connections, each sending req back to back
// for d, and counts the 2xx responses completed inside d.
func loadGen(ctx context.Context, addr string, req []byte, conns int, d time.Duration) loadResult {
	var ok, bad, errs atomic.Int64
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rc := newRawClient(addr, req)
			rc.deadline = start.Add(d + 10*time.Second)
			defer rc.Close()
			for ctx.Err() == nil {
				st, err := rc.Do()
				switch {
				case ctx.Err() != nil:
				case err != nil:
					errs.Add(1)
					time.Sleep(time.Millisecond)
				case st/100 == 2:
					ok.Add(1)
				default:
					bad.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	elapsed := min(time.Since(start), d)
	return loadResult{Requests: float64(ok.Load()) / elapsed.Seconds(), Non2xx: bad.Load(), Errors: errs.Load()}
}

// wrk drives the wrk binary.
type wrk struct {
	path    string
	version string
	dir     string // for Lua scripts
}

func findWrk(dir string) *wrk {
	p, err := exec.LookPath("wrk")
	if err != nil {
		return nil
	}
	w := &wrk{path: p, dir: dir, version: "wrk"}
	// wrk -v prints its version and usage, and exits 1.
	out, _ := exec.Command(p, "-v").CombinedOutput()
	if m := regexp.MustCompile(`wrk (\S+)`).FindSubmatch(out); m != nil {
		w.version = "wrk " + string(m[1])
	}
	return w
}

var (
	wrkRate   = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkNon2xx = regexp.MustCompile(`Non-2xx or 3xx responses:\s+(\d+)`)
	wrkSocket = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
)

// run runs wrk with threads and conns against url for d. body, if set,
// makes it a POST with that JSON body and authorization header.
// run loads url; headers ("Name: value") go with every request.
func (w *wrk) run(ctx context.Context, url string, threads, conns int, d time.Duration, auth string, body []byte, headers ...string) (loadResult, error) {
	// wrk counts time in whole seconds.
	d = max(time.Second, d.Round(time.Second))
	args := []string{"-t", strconv.Itoa(threads), "-c", strconv.Itoa(conns), "-d", fmt.Sprintf("%ds", int(d.Seconds()))}
	for _, h := range headers {
		args = append(args, "-H", h)
	}
	if body != nil {
		f, err := os.CreateTemp(w.dir, "wrk-*.lua")
		if err != nil {
			return loadResult{}, err
		}
		defer os.Remove(f.Name())
		fmt.Fprintf(f, "wrk.method = \"POST\"\nwrk.body = %q\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.headers[\"Authorization\"] = %q\n", body, auth)
		f.Close()
		args = append(args, "-s", f.Name())
	}
	args = append(args, url)
	cmd := exec.CommandContext(ctx, w.path, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return loadResult{}, fmt.Errorf("wrk %v: %w\n%s", args, err, out)
	}
	m := wrkRate.FindSubmatch(out)
	if m == nil {
		return loadResult{}, fmt.Errorf("wrk printed no Requests/sec:\n%s", out)
	}
	var res loadResult
	res.Requests, _ = strconv.ParseFloat(string(m[1]), 64)
	if ps := cmd.ProcessState; ps != nil {
		res.GenCPU = ps.UserTime() + ps.SystemTime()
	}
	if m := wrkNon2xx.FindSubmatch(out); m != nil {
		res.Non2xx, _ = strconv.ParseInt(string(m[1]), 10, 64)
	}
	if m := wrkSocket.FindSubmatch(out); m != nil {
		for _, g := range m[1:] {
			n, _ := strconv.ParseInt(string(g), 10, 64)
			res.Errors += n
		}
	}
	// wrk counts non-2xx responses in Requests/sec; count only the good.
	total := res.Requests * d.Seconds()
	if total > 0 && res.Non2xx > 0 {
		res.Requests *= max(0, total-float64(res.Non2xx)) / total
	}
	return res, nil
}
