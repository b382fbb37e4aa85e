//go:build linux

package evloop

import (
	"github.com/berthhq/berth/proxy/internal/rawio"

	"github.com/berthhq/berth/proxy/internal/h1"

	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A loop reads a socket only when epoll has said it is readable, and
// treats a read that did not fill the buffer as having drained it (the
// next arrival is a new edge), as nginx does; all sockets are registered
// edge-triggered. Go's netpoller instead reads a socket until read(2) says
// EAGAIN before it parks the goroutine, and wakes the goroutine when the
// socket is ready again: for the common request that is about one wasted
// system call per socket and two goroutine parks and wake-ups. A loop's
// requests never park a goroutine. Only a loop with no events at all
// parks, on its epoll descriptor in Go's netpoller: one empty epoll_wait
// per idle spell of the whole loop rather than a read per request.
//
// A loop serves GET or HEAD, HTTP/1.1, no body, to a backend that is ready
// at an IP address, and gives the rest away (Handler.HandOff).

// Group is the event loops, one per GOMAXPROCS.
type Group struct {
	cfg     Config
	loops   []*loop
	next    atomic.Uint32
	closing atomic.Bool
	wg      sync.WaitGroup
}

type loop struct {
	g    *Group
	epfd int
	ep   *os.File        // epfd, in Go's netpoller: the loop waits there
	eprc syscall.RawConn // of ep
	evfd int             // eventfd: connections in incoming, shutdown

	mu       sync.Mutex
	incoming []adopted
	stopped  bool // the loop takes no more connections
	woken    atomic.Bool
	aborted  atomic.Bool // Shutdown's context ended: close everything

	// The rest belongs to the loop's goroutine.
	fds      []fdOwner // by descriptor
	conns    map[*lconn]struct{}
	peak     int                    // most conns since the map was last made (see shrink)
	idle     map[string][]*lbackend // by address, least recently used first
	maxIdle  int                    // per address
	outFree  freeBufs               // client write buffers between answers
	inFree   freeBufs               // client read buffers of connections gone idle
	beFree   freeBufs               // read buffers of backend connections gone idle
	leaving  []*lconn               // clients gone while a young request is in flight
	now      int64                  // unix nanoseconds, after the last epoll_wait
	swept    int64
	deadline int64 // of the wait on ep
}

type adopted struct {
	fd       int
	clientIP string
	backend  string // the address of a backend connection (AdoptBackend); "" for a client's
}

// fdOwner is what a descriptor registered with a loop belongs to.
type fdOwner struct {
	c *lconn
	b *lbackend
}

// lconn states.
const (
	lcHead    = iota // waiting for or reading a request head
	lcConnect        // waiting for a new backend connection
	lcSend           // writing the request to the backend
	lcRelay          // relaying the response
	lcFlush          // writing the rest of an answer
)

// lconn is a client connection in a loop.
type lconn struct {
	fd        int
	x         Exchange
	readable  bool // epoll said so, and no read has drained it since
	writable  bool
	hup       bool // epoll saw the peer close or an error: reads stay due
	peerDone  bool // a read saw the client's end of the connection
	state     int
	idleSince int64

	in         []byte // clientReadSize, nil while idle; in[start:end] is unconsumed
	start, end int
	searched   int // bytes of in[start:end] searched for a head's end
	out        h1.OutBuf

	// The request in flight: its head is in[start:start+reqLen].
	begun      int64 // unix nanoseconds
	reqLen     int
	addr       string // of its backend
	head       bool   // a HEAD request
	keep       bool
	closeAfter bool
	be         *lbackend
	attempt    int
	reused     bool
	relay      h1.Relay
}

// lbackend is a backend connection in a loop.
type lbackend struct {
	fd         int
	addr       string
	readable   bool
	writable   bool
	hup        bool
	eof        bool
	in         []byte // backendReadSize while a request is out; nil while idle
	start, end int
	out        h1.OutBuf
	got        bool // bytes of the current response arrived
	owner      *lconn
	dialAt     int64 // while connecting
	idleAt     int64 // in the pool
}

const (
	loopEvents = 256
	// clientOutMax bounds the body bytes a loop buffers for a client
	// before writing them.
	clientOutMax = 32 << 10
	dialTimeout  = 3 * time.Second // as newDialer's
)

// Start starts one loop per GOMAXPROCS, or returns an error when the
// system refuses epoll.
func Start(cfg Config) (*Group, error) {
	g := &Group{cfg: cfg}
	for range runtime.GOMAXPROCS(0) {
		l, err := newLoop(g)
		if err != nil {
			for _, l := range g.loops {
				l.stop() // never ran: this closes its descriptors
			}
			return nil, err
		}
		g.loops = append(g.loops, l)
	}
	for _, l := range g.loops {
		// The loops share the proxy's bound on idle connections to one
		// backend.
		l.maxIdle = max(1, cfg.MaxIdlePerBackend/len(g.loops))
		g.wg.Add(1)
		go l.run()
	}
	return g, nil
}

func newLoop(g *Group) (*loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create: %w", err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(evfd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(evfd)
		return nil, fmt.Errorf("epoll_ctl: %w", err)
	}
	// An epoll instance is readable when it has events. Waiting for that
	// in Go's netpoller rather than in epoll_wait(2) keeps the loop's
	// thread and P: a blocking system call makes the runtime hand the P
	// to another thread and wake one up to take it back.
	unix.SetNonblock(epfd, true) // so that os.NewFile puts it in the netpoller
	ep := os.NewFile(uintptr(epfd), "epoll")
	rc, err := ep.SyscallConn()
	if err == nil {
		err = ep.SetReadDeadline(time.Time{}) // fails unless in the netpoller
	}
	if err != nil {
		ep.Close()
		unix.Close(evfd)
		return nil, fmt.Errorf("epoll in the netpoller: %w", err)
	}
	return &loop{
		g:     g,
		epfd:  epfd,
		ep:    ep,
		eprc:  rc,
		evfd:  evfd,
		conns: make(map[*lconn]struct{}),
		idle:  make(map[string][]*lbackend),
	}, nil
}

// Adopt takes c out of Go's netpoller and gives it to a loop. It reports
// false, leaving c as it was, when c is not a TCP socket or no loop runs.
func (g *Group) Adopt(c net.Conn) bool {
	if g == nil {
		return false
	}
	fd, ok := dupFD(c)
	if !ok {
		return false
	}
	a := adopted{fd: fd}
	if addr, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		a.clientIP = addr.IP.String()
	}
	// The next loop that still runs takes it; a loop stops early only
	// after an epoll error, and then the others (or the goroutine path,
	// with c untouched) serve in its stead.
	return g.give(int(g.next.Add(1)), c, a)
}

// AdoptBackend takes c, an idle connection to the backend at addr (an IP
// literal) on which nothing is left to read, out of Go's netpoller and
// puts it in the idle connections of the loop that the next client
// connection goes to, which then sends its first request to that backend
// without a dial. It reports false, leaving c as it was, when c is not a
// TCP socket, addr not an IP literal, or no loop runs.
func (g *Group) AdoptBackend(addr string, c net.Conn) bool {
	if g == nil || !CanDial(addr) {
		return false
	}
	fd, ok := dupFD(c)
	if !ok {
		return false
	}
	return g.give(int(g.next.Load()+1), c, adopted{fd: fd, backend: addr})
}

// dupFD duplicates c's descriptor, for a loop to own.
func dupFD(c net.Conn) (int, bool) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return -1, false
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return -1, false
	}
	fd := -1
	cerr := rc.Control(func(s uintptr) {
		fd, err = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0)
	})
	if cerr != nil || err != nil {
		return -1, false
	}
	return fd, true
}

// give queues a, whose descriptor duplicates c's, to the first loop from
// first on that still runs, and closes c; or closes the duplicate and
// reports false when none does.
func (g *Group) give(first int, c net.Conn, a adopted) bool {
	fd := a.fd
	for i := range g.loops {
		l := g.loops[(first+i)%len(g.loops)]
		l.mu.Lock()
		if l.stopped {
			l.mu.Unlock()
			continue
		}
		l.incoming = append(l.incoming, a)
		l.mu.Unlock()
		c.Close() // the duplicate keeps the socket open
		l.wake()
		return true
	}
	unix.Close(fd)
	return false
}

// Shutdown makes the loops close their idle connections, and those with a
// request in flight once it is answered, and stop when they hold none.
// Connections adopted from then on are closed unless a request of theirs
// is in flight.
func (g *Group) Shutdown() {
	if g == nil {
		return
	}
	g.closing.Store(true)
	for _, l := range g.loops {
		l.wake()
	}
}

// Abort makes every loop close all its connections and stop.
func (g *Group) Abort() {
	if g == nil {
		return
	}
	for _, l := range g.loops {
		l.abort()
	}
}

// Wait waits for every loop to stop.
func (g *Group) Wait() {
	if g != nil {
		g.wg.Wait()
	}
}

// wake writes to the loop's eventfd, unless the loop has stopped: stop
// closes the eventfd, and its number may by then name another file.
func (l *loop) wake() {
	if l.woken.CompareAndSwap(false, true) {
		l.mu.Lock()
		if !l.stopped {
			var one = [8]byte{1}
			unix.Write(l.evfd, one[:])
		}
		l.mu.Unlock()
	}
}

func (l *loop) abort() {
	l.aborted.Store(true)
	l.woken.Store(false)
	l.wake()
}

func (l *loop) run() {
	defer l.g.wg.Done()
	tick := l.g.cfg.SweepTick
	events := make([]unix.EpollEvent, loopEvents)
	var (
		n     int
		errno syscall.Errno
	)
	poll := func(fd uintptr) bool {
		n, errno = epollWaitNow(fd, events)
		return n > 0 || (errno != 0 && errno != unix.EINTR)
	}
	for {
		// Wake up for the sweep, and for clients that left.
		next := l.now + int64(tick)
		if len(l.leaving) > 0 {
			if at := l.checkLeaving(); at > 0 {
				next = min(next, at)
			}
		}
		if l.now >= l.deadline || next < l.deadline {
			l.deadline = next
			l.ep.SetReadDeadline(time.Unix(0, next))
		}
		n, errno = 0, 0
		err := l.eprc.Read(poll)
		l.now = time.Now().UnixNano()
		if errno != 0 && errno != unix.EINTR {
			err = errno
		}
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			l.g.cfg.Log.Error("proxy: event loop: epoll_wait", "err", err)
			l.aborted.Store(true)
		}
		for _, ev := range events[:max(n, 0)] {
			fd := int(ev.Fd)
			if fd == l.evfd {
				l.takeIncoming()
				continue
			}
			if fd >= len(l.fds) {
				continue
			}
			hup := ev.Events&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0
			in := hup || ev.Events&unix.EPOLLIN != 0
			out := ev.Events&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0
			switch o := l.fds[fd]; {
			case o.c != nil:
				o.c.readable = o.c.readable || in
				o.c.writable = o.c.writable || out
				o.c.hup = o.c.hup || hup
				l.advance(o.c)
			case o.b != nil:
				o.b.readable = o.b.readable || in
				o.b.writable = o.b.writable || out
				o.b.hup = o.b.hup || hup
				if o.b.owner != nil {
					l.advance(o.b.owner)
				} else if in {
					l.dropIdle(o.b) // the backend closed it, or spoke out of turn
				}
			}
		}
		if l.aborted.Load() {
			l.stop()
			return
		}
		if l.g.closing.Load() {
			l.takeIncoming()
			for c := range l.conns {
				if c.state == lcHead {
					l.closeClient(c)
				}
			}
			if len(l.conns) == 0 {
				l.stop()
				return
			}
		}
		if l.now-l.swept >= int64(tick) {
			l.sweep()
		}
	}
}

// takeIncoming registers the connections adopt queued.
func (l *loop) takeIncoming() {
	var b [8]byte
	unix.Read(l.evfd, b[:])
	l.woken.Store(false)
	l.mu.Lock()
	incoming := l.incoming
	l.incoming = nil
	l.mu.Unlock()
	for _, a := range incoming {
		if a.backend != "" {
			// Connected and idle: writable, as a dialled one is once
			// epoll has said so.
			b := &lbackend{fd: a.fd, addr: a.backend, writable: true}
			if err := l.register(a.fd, fdOwner{b: b}); err != nil {
				l.g.cfg.Log.Warn("proxy: event loop: register", "err", err)
				unix.Close(a.fd)
				continue
			}
			l.putIdle(b)
			continue
		}
		c := &lconn{fd: a.fd, x: l.g.cfg.Handler.NewExchange(a.clientIP), idleSince: l.now}
		if err := l.register(a.fd, fdOwner{c: c}); err != nil {
			l.g.cfg.Log.Warn("proxy: event loop: register", "err", err)
			unix.Close(a.fd)
			continue
		}
		l.conns[c] = struct{}{}
		l.peak = max(l.peak, len(l.conns))
	}
}

func (l *loop) register(fd int, o fdOwner) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(fd)}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return err
	}
	if fd >= len(l.fds) {
		l.fds = append(l.fds, make([]fdOwner, fd+1-len(l.fds))...)
	}
	l.fds[fd] = o
	return nil
}

// stop closes every connection and the loop itself.
func (l *loop) stop() {
	l.mu.Lock()
	l.stopped = true
	incoming := l.incoming
	l.incoming = nil
	l.mu.Unlock()
	for _, a := range incoming {
		unix.Close(a.fd)
	}
	for c := range l.conns {
		l.closeClient(c)
	}
	for _, bs := range l.idle {
		for _, b := range bs {
			l.closeBackend(b)
		}
	}
	l.idle = nil
	l.ep.Close()
	unix.Close(l.evfd)
}

// sweep closes client connections idle for longer than the idle timeout,
// backend connections idle for longer than the pool keeps them, and
// connects that take too long.
func (l *loop) sweep() {
	l.swept = l.now
	l.inFree.trim()
	l.beFree.trim()
	l.outFree.trim()
	cutoff := l.now - int64(l.g.cfg.IdleTimeout)
	for c := range l.conns {
		switch {
		case c.state == lcHead && c.idleSince < cutoff:
			l.closeClient(c)
		case c.state == lcConnect && l.now-c.be.dialAt > int64(dialTimeout):
			if l.backendFailed(c, fmt.Errorf("dial tcp %s: i/o timeout", c.be.addr)) {
				l.advance(c)
			}
		}
	}
	l.shrink()
	cutoff = l.now - int64(l.g.cfg.BackendIdleTimeout)
	for addr, bs := range l.idle {
		old := 0
		for old < len(bs) && bs[old].idleAt < cutoff {
			l.closeBackend(bs[old])
			old++
		}
		n := copy(bs, bs[old:])
		clear(bs[n:])
		if n == 0 {
			delete(l.idle, addr)
		} else {
			l.idle[addr] = bs[:n]
		}
	}
}

// advance moves c's request along as far as it can go without waiting.
func (l *loop) advance(c *lconn) {
	for {
		var more bool
		switch c.state {
		case lcHead:
			more = l.readHead(c)
		case lcConnect:
			more = l.connected(c)
		case lcSend:
			more = l.send(c)
		case lcRelay:
			more = l.relayResponse(c)
		case lcFlush:
			more = l.flush(c)
		}
		if !more {
			return
		}
	}
}

// epollWaitNow is epoll_pwait(2) without waiting: a raw system call, which
// cannot block, so it keeps the P.
func epollWaitNow(epfd uintptr, events []unix.EpollEvent) (int, syscall.Errno) {
	n, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, epfd, uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), 0
}

// readFd and writeFd are one read(2) or write(2), retried on EINTR.
func readFd(fd int, b []byte) (int, syscall.Errno) {
	for {
		n, e := rawio.Read(uintptr(fd), b)
		if e != unix.EINTR {
			return n, e
		}
	}
}

func writeFd(fd int, b []byte) (int, syscall.Errno) {
	for {
		n, e := rawio.Write(uintptr(fd), b)
		if e != unix.EINTR {
			return n, e
		}
	}
}

// readHead reads until in holds a whole request head, and starts it.
func (l *loop) readHead(c *lconn) bool {
	if l.g.closing.Load() {
		l.closeClient(c)
		return false
	}
	if c.start == c.end {
		c.start, c.end = 0, 0
		if !c.readable {
			// Idle, with nothing to read: the read buffer waits with the
			// loop, not with the connection, until the client speaks.
			l.releaseInput(c)
			return false
		}
		if c.in == nil {
			c.in = l.input()
		}
	}
	n := h1.IndexHeadEnd(c.in[c.start:c.end], c.searched)
	if n < 0 {
		c.searched = max(0, c.end-c.start-3)
		if c.end-c.start == len(c.in) {
			l.handOff(c, false) // too large for the fast path
			return false
		}
		if !c.readable {
			return false
		}
		if c.end == len(c.in) {
			c.end = copy(c.in, c.in[c.start:c.end])
			c.start = 0
		}
		k, e := readFd(c.fd, c.in[c.end:])
		switch {
		case e == unix.EAGAIN:
			c.readable = false
			if c.start == c.end {
				l.releaseInput(c) // woken for nothing: still idle
			}
			return false
		case e != 0 || k == 0:
			l.closeClient(c) // closed, or the client went away
			return false
		}
		if k < len(c.in)-c.end {
			c.readable = c.hup // a short read drained the socket, but for its end
		}
		c.end += k
		return true
	}
	c.searched = 0
	return l.begin(c, n)
}

// begin starts the request whose head is the first n unconsumed bytes.
func (l *loop) begin(c *lconn, n int) bool {
	next := c.x.Begin(c.in[c.start:c.start+n], l.output(c))
	c.reqLen, c.head, c.keep, c.begun = n, next.Head, !next.Close, l.now
	switch next.Action {
	case Answered:
		return l.answered(c, next.Close)
	case Refuse:
		l.handOff(c, false)
		return false
	case Wait:
		l.handOff(c, true)
		return false
	}
	if len(l.idle[next.Addr]) == 0 && !CanDial(next.Addr) {
		l.handOff(c, true) // a name to look up
		return false
	}
	c.addr, c.attempt = next.Addr, 0
	return l.connect(c)
}

// output is c's output buffer.
func (l *loop) output(c *lconn) *h1.OutBuf {
	if c.out.B == nil {
		c.out.B = l.outFree.get(clientOutMax + 4<<10)[:0]
	}
	return &c.out
}

// answered ends the request in flight once its answer is in c.out.
func (l *loop) answered(c *lconn, closeAfter bool) bool {
	c.start += c.reqLen
	c.reqLen = 0
	c.closeAfter = closeAfter
	c.state = lcFlush
	return true
}

// connect gives c a backend connection, idle or new, for its request.
func (l *loop) connect(c *lconn) bool {
	addr := c.addr
	if bs := l.idle[addr]; len(bs) > 0 {
		b := bs[len(bs)-1]
		bs[len(bs)-1] = nil
		l.idle[addr] = bs[:len(bs)-1]
		c.be, b.owner, c.reused = b, c, true
		return l.startSend(c)
	}
	b, err := l.dial(addr)
	if err != nil {
		c.x.BadGateway(l.output(c), err)
		return l.answered(c, !c.keep)
	}
	c.be, b.owner, c.reused = b, c, false
	c.state = lcConnect
	return true
}

// CanDial reports whether a loop can connect to addr itself: an IP
// literal and a port.
func CanDial(addr string) bool {
	_, err := sockaddr(addr)
	return err == nil
}

// sockaddr parses an IP literal address.
func sockaddr(addr string) (unix.Sockaddr, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, err
	}
	ip := ap.Addr().Unmap()
	switch {
	case ip.Is4():
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ip.As4()}, nil
	case ip.Zone() != "":
		return nil, errors.New("an address with a zone")
	}
	return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ip.As16()}, nil
}

// dial starts a non-blocking connect to addr, an IP literal.
func (l *loop) dial(addr string) (*lbackend, error) {
	sa, err := sockaddr(addr)
	if err != nil {
		return nil, err
	}
	family := unix.AF_INET
	if _, ok := sa.(*unix.SockaddrInet6); ok {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dial tcp %s: socket: %w", addr, err)
	}
	// As net.Dialer sets them up.
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, 30)
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, 15)
	if err := unix.Connect(fd, sa); err != nil && err != unix.EINPROGRESS {
		unix.Close(fd)
		return nil, fmt.Errorf("dial tcp %s: connect: %w", addr, err)
	}
	b := &lbackend{fd: fd, addr: addr, dialAt: l.now}
	if err := l.register(fd, fdOwner{b: b}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("dial tcp %s: epoll_ctl: %w", addr, err)
	}
	return b, nil
}

// connected waits for a new backend connection to connect.
func (l *loop) connected(c *lconn) bool {
	if l.clientGone(c) {
		return false
	}
	b := c.be
	if !b.writable {
		return false
	}
	if errno, err := unix.GetsockoptInt(b.fd, unix.SOL_SOCKET, unix.SO_ERROR); err != nil || errno != 0 {
		if err == nil {
			err = syscall.Errno(errno)
		}
		return l.backendFailed(c, fmt.Errorf("dial tcp %s: connect: %w", b.addr, err))
	}
	return l.startSend(c)
}

func (l *loop) startSend(c *lconn) bool {
	b := c.be
	if b.in == nil {
		b.in = l.beFree.get(l.g.cfg.BackendReadSize)
	}
	b.out.B = b.out.B[:0]
	c.x.WriteRequest(&b.out)
	b.got, b.eof = false, false
	c.state = lcSend
	return true
}

// send writes the request to the backend.
func (l *loop) send(c *lconn) bool {
	if l.clientGone(c) {
		return false
	}
	b := c.be
	for len(b.out.B) > 0 {
		if !b.writable {
			return false
		}
		n, e := writeFd(b.fd, b.out.B)
		switch {
		case e == unix.EAGAIN:
			b.writable = false
			return false
		case e != 0 && c.reused && c.attempt == 0:
			return l.retry(c)
		case e != 0:
			return l.backendFailed(c, fmt.Errorf("write to backend: %w", e))
		}
		if n < len(b.out.B) {
			b.writable = false
		}
		b.out.B = b.out.B[:copy(b.out.B, b.out.B[n:])]
	}
	c.relay.Reset(c.head)
	c.state = lcRelay
	return true
}

// relayResponse relays the backend's response as relayResponse does:
// the client gets what has arrived whenever the relay would wait for the
// backend, and the backend is not read while the client cannot take more.
func (l *loop) relayResponse(c *lconn) bool {
	b := c.be
	out := l.output(c)
	for {
		if l.clientGone(c) {
			return false
		}
		if c.relay.InHead() {
			c.relay.ForceClose = !c.keep || l.g.closing.Load()
		}
		used, wantIn, err := c.relay.Feed(b.in[b.start:b.end], out, clientOutMax-len(out.B), len(b.in), b.eof)
		b.start += used
		if err != nil {
			return l.relayFailed(c, err)
		}
		if c.relay.Done() {
			return l.responded(c)
		}
		if len(out.B) > 0 {
			if !l.write(c) {
				return false
			}
			if !wantIn {
				continue
			}
		}
		if !b.readable {
			return false
		}
		if b.start == b.end {
			b.start, b.end = 0, 0
		} else if b.start > 0 {
			b.end = copy(b.in, b.in[b.start:b.end])
			b.start = 0
		}
		n, e := readFd(b.fd, b.in[b.end:])
		switch {
		case e == unix.EAGAIN:
			b.readable = false
			return false
		case (e != 0 || n == 0) && !b.got && c.reused && c.attempt == 0:
			return l.retry(c)
		case e != 0:
			return l.relayFailed(c, fmt.Errorf("read from backend: %w", e))
		case n == 0:
			b.eof, b.readable = true, false
			continue
		}
		if n < len(b.in)-b.end {
			b.readable = b.hup
		}
		b.end += n
		b.got = true
	}
}

// write writes c.out, and reports whether it is all written; when not,
// c waits for the socket, or is closed.
func (l *loop) write(c *lconn) bool {
	for len(c.out.B) > 0 {
		if !c.writable {
			return false
		}
		n, e := writeFd(c.fd, c.out.B)
		switch {
		case e == unix.EAGAIN:
			c.writable = false
			return false
		case e != 0:
			if c.state == lcRelay {
				c.x.Aborted(nil)
			}
			l.closeClient(c)
			return false
		}
		if n < len(c.out.B) {
			c.writable = false
		}
		c.out.B = c.out.B[:copy(c.out.B, c.out.B[n:])]
	}
	return true
}

// clientGone looks, while a request is in flight, for the client going
// away, and then ends the request; bytes the client sends meanwhile (a
// pipelined request) are kept for later. As with the goroutine path's
// watcher, a request younger than watchAfter is left to finish: a client
// that only shut down its side of the connection still gets a quick
// answer.
func (l *loop) clientGone(c *lconn) bool {
	if !c.readable || c.end == len(c.in) || c.peerDone {
		return false
	}
	n, e := readFd(c.fd, c.in[c.end:])
	switch {
	case e == unix.EAGAIN:
		c.readable = false
		return false
	case e != 0 || n == 0:
		c.peerDone = true
		if l.now-c.begun < int64(l.g.cfg.WatchAfter) {
			l.leaving = append(l.leaving, c)
			return false
		}
		l.abandon(c)
		return true
	}
	if n < len(c.in)-c.end {
		c.readable = c.hup
	}
	c.end += n
	return false
}

// abandon ends the request in flight of a client that went away.
func (l *loop) abandon(c *lconn) {
	if c.state == lcRelay && c.relay.Result().Started {
		c.x.Aborted(nil)
	}
	l.closeClient(c)
}

// checkLeaving abandons the requests of clients that went away once they
// are watchAfter old, and returns when the next one will be.
func (l *loop) checkLeaving() (next int64) {
	kept := l.leaving[:0]
	for _, c := range l.leaving {
		switch {
		case c.fd < 0 || c.state == lcHead || c.state == lcFlush:
			// closed, or answered: reading the client's end closes it
		case l.now-c.begun >= int64(l.g.cfg.WatchAfter):
			l.abandon(c)
		default:
			kept = append(kept, c)
			if at := c.begun + int64(l.g.cfg.WatchAfter); next == 0 || at < next {
				next = at
			}
		}
	}
	clear(l.leaving[len(kept):])
	l.leaving = kept
	return next
}

// responded ends a response h1.Relayed in full.
func (l *loop) responded(c *lconn) bool {
	b := c.be
	c.be, b.owner = nil, nil
	if c.relay.Result().BackendReusable && b.start == b.end && !b.eof {
		l.putIdle(b)
	} else {
		l.closeBackend(b)
	}
	return l.answered(c, !c.keep || c.relay.Result().ClientClose)
}

// retry sends the request again on another connection, after a reused
// one failed before any byte of the response: the backend had closed it
// while idle, and the request is idempotent.
func (l *loop) retry(c *lconn) bool {
	l.closeBackend(c.be)
	c.be = nil
	c.attempt++
	return l.connect(c)
}

// backendFailed answers 502 for a backend that could not be reached or
// written to.
func (l *loop) backendFailed(c *lconn, err error) bool {
	l.closeBackend(c.be)
	c.be = nil
	c.x.BadGateway(l.output(c), err)
	return l.answered(c, !c.keep)
}

// relayFailed ends a response that failed: with a 502 if nothing of it
// was written yet, else by closing the client's connection, so that a
// truncated response never looks complete.
func (l *loop) relayFailed(c *lconn, err error) bool {
	if !c.relay.Result().Started {
		return l.backendFailed(c, err)
	}
	c.x.Aborted(err)
	l.closeClient(c)
	return false
}

// flush writes the rest of an answer, then ends the request and turns to
// the next one.
func (l *loop) flush(c *lconn) bool {
	if !l.write(c) {
		return false
	}
	c.x.End()
	l.releaseOutput(c)
	if c.closeAfter || l.g.closing.Load() {
		l.closeClient(c)
		return false
	}
	c.state, c.idleSince = lcHead, l.now
	return true
}

// input is a client read buffer.
func (l *loop) input() []byte { return l.inFree.get(l.g.cfg.ClientReadSize) }

// releaseInput takes the read buffer of c, which holds nothing unconsumed.
func (l *loop) releaseInput(c *lconn) {
	l.inFree.put(c.in)
	c.in = nil
}

// freeBufs is a loop's spare buffers of one kind: a connection going idle
// leaves its buffer here, and one with bytes to move takes it back. The
// list holds at most maxFreeBufs, and trim, at every sweep, drops the
// spares that went unused since the last one, so a spike's buffers do not
// stay with the loop for good.
type freeBufs struct {
	bufs [][]byte
	low  int // the fewest spares since the last trim
}

const maxFreeBufs = 64

// get returns a spare, or a new buffer of size bytes.
func (f *freeBufs) get(size int) []byte {
	n := len(f.bufs)
	if n == 0 {
		return make([]byte, size)
	}
	b := f.bufs[n-1]
	f.bufs[n-1] = nil
	f.bufs = f.bufs[:n-1]
	f.low = min(f.low, n-1)
	return b
}

func (f *freeBufs) put(b []byte) {
	if b != nil && len(f.bufs) < maxFreeBufs {
		f.bufs = append(f.bufs, b)
	}
}

// trim drops the spares no get needed since the last trim: the bottom of
// the list, which is what stayed below its lowest point.
func (f *freeBufs) trim() {
	n := copy(f.bufs, f.bufs[f.low:])
	clear(f.bufs[n:])
	f.bufs = f.bufs[:n]
	f.low = n
}

func (l *loop) releaseOutput(c *lconn) {
	l.outFree.put(c.out.B)
	c.out.B = nil
}

// shrinkMin is the size below which shrink leaves the loop's tables alone.
const shrinkMin = 1024

// shrink lets the loop's tables go back down after a spike of connections:
// a Go map keeps its buckets when entries go, and fds is as long as the
// highest descriptor ever registered. Each is remade when it holds under a
// quarter of what it was sized for.
func (l *loop) shrink() {
	if n := len(l.conns); l.peak > shrinkMin && n < l.peak/4 {
		m := make(map[*lconn]struct{}, n)
		for c := range l.conns {
			m[c] = struct{}{}
		}
		l.conns, l.peak = m, n
	}
	if len(l.fds) > shrinkMin {
		top := len(l.fds)
		for top > 0 && l.fds[top-1] == (fdOwner{}) {
			top--
		}
		if top < len(l.fds)/4 {
			l.fds = append([]fdOwner(nil), l.fds[:top]...)
		}
	}
}

func (l *loop) closeClient(c *lconn) {
	if c.be != nil {
		l.closeBackend(c.be)
		c.be = nil
	}
	c.x.End()
	l.releaseOutput(c)
	l.releaseInput(c)
	delete(l.conns, c)
	l.fds[c.fd] = fdOwner{}
	unix.Close(c.fd)
	c.fd = -1
}

func (l *loop) closeBackend(b *lbackend) {
	b.owner = nil
	l.beFree.put(b.in)
	b.in = nil
	l.fds[b.fd] = fdOwner{}
	unix.Close(b.fd)
	b.fd = -1
}

func (l *loop) putIdle(b *lbackend) {
	bs := l.idle[b.addr]
	if len(bs) >= l.maxIdle || l.g.closing.Load() {
		l.closeBackend(b)
		return
	}
	b.idleAt = l.now
	b.start, b.end = 0, 0
	// An idle connection holds no read buffer: a backend that many
	// clients visited at once may keep hundreds of them for 90 s.
	l.beFree.put(b.in)
	b.in = nil
	l.idle[b.addr] = append(bs, b)
}

// dropIdle closes an idle backend connection that became readable.
func (l *loop) dropIdle(b *lbackend) {
	bs := l.idle[b.addr]
	for i, x := range bs {
		if x == b {
			copy(bs[i:], bs[i+1:])
			bs[len(bs)-1] = nil
			l.idle[b.addr] = bs[:len(bs)-1]
			break
		}
	}
	l.closeBackend(b)
}

// handOff gives c, with the bytes read and not consumed, to the Handler.
func (l *loop) handOff(c *lconn, parsed bool) {
	c.x.End()
	prefix := append([]byte(nil), c.in[c.start:c.end]...)
	l.releaseOutput(c)
	l.releaseInput(c)
	unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, c.fd, nil)
	l.fds[c.fd] = fdOwner{}
	delete(l.conns, c)
	f := os.NewFile(uintptr(c.fd), "")
	nc, err := net.FileConn(f)
	f.Close()
	c.fd = -1
	if err != nil {
		l.g.cfg.Log.Warn("proxy: event loop: hand-off", "err", err)
		return
	}
	l.g.cfg.Handler.HandOff(nc, prefix, parsed)
}
