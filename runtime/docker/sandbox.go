package docker

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
)

// Network sandboxes. Most of a container's start on a user-defined bridge
// network is the engine wiring up its network namespace (veth pair,
// endpoint, embedded DNS): about 210 ms per `docker run` there against
// about 80 ms for a container that joins another's namespace (network mode
// container:<id>), measured with the CLI on Docker 20.10. So the runtime
// keeps a few sandboxes ready: minimal containers whose only job is to hold
// a network namespace on the backends' network. Start takes one, the
// backend's container joins its namespace, and the backend is reached at
// the sandbox's address. A sandbox serves one backend and is removed with
// it (Cleanup), never reused; the pool refills in the background, one
// sandbox at a time. When the pool is empty — a burst of starts — Start
// joins the network directly, as without a pool.
//
// A sandbox runs a 130-byte static program that only sleeps, imported once
// as the image sandboxImage (there is no registry to pull from, and none is
// needed). It runs as nobody, with no capabilities, a read-only root, 8 MiB
// of memory and one pid. Sandboxes carry LabelSandbox and the instance
// label; a backend that uses one names it in LabelNetworkSandbox. At New,
// sandboxes of this instance that no container names are removed: those a
// previous Berth left ready.
//
// Pools are off with Config.Publish (published ports belong to the
// namespace's first container, and the port is not known in advance), with
// an OCI runtime other than the engine's default, and on engines that are
// not amd64 or arm64.

const (
	// LabelSandbox marks a network sandbox container.
	LabelSandbox = "berth.sandbox"
	// LabelNetworkSandbox on a backend's container names the sandbox whose
	// network namespace it joined.
	LabelNetworkSandbox = "berth.network-sandbox"

	sandboxImage       = "berth-sandbox:1"
	defaultSandboxes   = 2
	sandboxMemory      = 8 << 20
	sandboxRetryFloor  = time.Second
	sandboxRetryCeil   = time.Minute
	sandboxCallTimeout = 30 * time.Second
)

// sandbox is a ready network namespace on the backends' network.
type sandbox struct {
	id string
	ip netip.Addr
}

// sandboxPool keeps up to size sandboxes ready.
type sandboxPool struct {
	r    *Runtime
	size int

	mu       sync.Mutex
	ready    []sandbox
	creating bool
	kick     chan struct{} // capacity 1: "the pool may need filling"
}

// SandboxStats is the state of the sandbox pool, for metrics.
type SandboxStats struct {
	Size     int  // sandboxes the pool keeps ready; 0 when it is off
	Ready    int  // ready now
	Creating bool // a sandbox is being created
}

// Sandboxes reports the pool's state.
func (r *Runtime) Sandboxes() SandboxStats {
	p := r.pool
	if p == nil {
		return SandboxStats{}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return SandboxStats{Size: p.size, Ready: len(p.ready), Creating: p.creating}
}

// startPool starts the pool's filler, if the pool applies; see above.
func (r *Runtime) startPool(ctx context.Context) {
	size := r.cfg.Sandboxes
	if size == 0 {
		size = defaultSandboxes
	}
	switch {
	case size < 0:
		return
	case r.cfg.Publish || r.cfg.OCIRuntime != "":
		r.log.Debug("network sandboxes are off with Publish or an OCI runtime set")
		return
	}
	v, err := r.cli.ServerVersion(ctx, client.ServerVersionOptions{})
	if err != nil {
		r.log.Warn("network sandboxes are off: the engine's version", "err", err)
		return
	}
	prog := pauseProgram(v.Arch)
	if prog == nil {
		r.log.Info("network sandboxes are off on this engine's architecture", "arch", v.Arch)
		return
	}
	p := &sandboxPool{r: r, size: size, kick: make(chan struct{}, 1)}
	r.pool = p
	r.wg.Go(func() { p.run(prog) })
}

// take returns a ready sandbox, if there is one, and has the pool refilled.
func (p *sandboxPool) take() (sandbox, bool) {
	if p == nil {
		return sandbox{}, false
	}
	p.mu.Lock()
	n := len(p.ready)
	var sb sandbox
	if n > 0 {
		sb = p.ready[n-1]
		p.ready = p.ready[:n-1]
	}
	p.mu.Unlock()
	p.poke()
	return sb, n > 0
}

func (p *sandboxPool) poke() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// run removes the sandboxes an earlier Berth left, makes sure the image
// exists, then keeps the pool full until the runtime closes, and empties it
// then. Failures back off, up to a minute between attempts.
func (p *sandboxPool) run(prog []byte) {
	ctx := p.r.ctx
	defer p.drain()
	p.removeOrphans(ctx)
	retry := sandboxRetryFloor
	for ctx.Err() == nil {
		err := p.ensureImage(ctx, prog)
		if err == nil {
			break
		}
		p.r.log.Warn("network sandboxes: the image", "err", err, "retry_in", retry)
		if !sleep(ctx, retry) {
			return
		}
		retry = min(2*retry, sandboxRetryCeil)
	}
	p.poke()
	retry = sandboxRetryFloor
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.kick:
		}
		for ctx.Err() == nil && p.needs() {
			sb, err := p.create()
			if err != nil {
				p.setCreating(false)
				if ctx.Err() != nil {
					return
				}
				if cerrdefs.IsNotFound(err) && !p.r.renewNetwork(ctx) { // or someone removed the image
					err = errors.Join(err, p.ensureImage(ctx, prog))
				}
				p.r.log.Warn("network sandboxes: create", "err", err, "retry_in", retry)
				if !sleep(ctx, retry) {
					return
				}
				retry = min(2*retry, sandboxRetryCeil)
				continue
			}
			retry = sandboxRetryFloor
			p.mu.Lock()
			p.ready = append(p.ready, sb)
			p.creating = false
			p.mu.Unlock()
		}
	}
}

// needs reports whether the pool is short, and if so marks it creating.
func (p *sandboxPool) needs() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.creating = len(p.ready) < p.size
	return p.creating
}

func (p *sandboxPool) setCreating(v bool) {
	p.mu.Lock()
	p.creating = v
	p.mu.Unlock()
}

// drain removes the ready sandboxes, and any other of this instance's that
// no container names: one a killed Berth asked for, which the engine
// finished after the restarted Berth's removeOrphans had looked; the
// runtime is closing.
func (p *sandboxPool) drain() {
	p.mu.Lock()
	ready := p.ready
	p.ready, p.creating = nil, false
	p.mu.Unlock()
	for _, sb := range ready {
		p.r.removeContainer(sb.id)
	}
	p.removeOrphans(context.Background())
}

// create creates and starts one sandbox and learns its address. Close does
// not interrupt it: an engine that created a container after its client
// gave up on the call would leave it behind.
func (p *sandboxPool) create() (sandbox, error) {
	ctx, cancel := context.WithTimeout(context.Background(), sandboxCallTimeout)
	defer cancel()
	r := p.r
	name := "berth-sandbox-" + strings.ToLower(rand.Text()[:12])
	created, err := r.cli.ContainerCreate(ctx, client.ContainerCreateOptions{
		Name: name,
		Config: &container.Config{
			Image:  sandboxImage,
			User:   defaultUser,
			Labels: map[string]string{LabelSandbox: "true", LabelInstance: r.cfg.Instance},
		},
		HostConfig: &container.HostConfig{
			NetworkMode:    container.NetworkMode(r.network()),
			CapDrop:        []string{"ALL"},
			SecurityOpt:    []string{"no-new-privileges"},
			ReadonlyRootfs: true,
			Resources: container.Resources{
				Memory:     sandboxMemory,
				MemorySwap: sandboxMemory,
				PidsLimit:  new(int64(1)),
			},
		},
	})
	if err != nil {
		if !cerrdefs.IsConflict(err) {
			r.removeContainer(name)
		}
		return sandbox{}, err
	}
	sb, err := r.startSandbox(ctx, created.ID)
	if err != nil {
		r.removeContainer(created.ID)
	}
	return sb, err
}

func (r *Runtime) startSandbox(ctx context.Context, id string) (sandbox, error) {
	if _, err := r.cli.ContainerStart(ctx, id, client.ContainerStartOptions{}); err != nil {
		return sandbox{}, err
	}
	res, err := r.cli.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
	if err != nil {
		return sandbox{}, err
	}
	if ns := res.Container.NetworkSettings; ns != nil {
		if ep := ns.Networks[r.cfg.Network]; ep != nil && ep.IPAddress.Is4() {
			return sandbox{id: id, ip: ep.IPAddress}, nil
		}
	}
	return sandbox{}, errors.New("the sandbox has no IPv4 address on network " + r.cfg.Network)
}

// removeOrphans removes this instance's sandboxes that no container of the
// instance names: those an earlier Berth kept ready when it stopped.
func (p *sandboxPool) removeOrphans(ctx context.Context) {
	r := p.r
	ctx, cancel := context.WithTimeout(ctx, sandboxCallTimeout)
	defer cancel()
	res, err := r.cli.ContainerList(ctx, client.ContainerListOptions{
		All:     true,
		Filters: make(client.Filters).Add("label", LabelInstance+"="+r.cfg.Instance),
	})
	if err != nil {
		r.log.Warn("network sandboxes: list the old ones", "err", err)
		return
	}
	used := make(map[string]bool)
	for _, c := range res.Items {
		if id := c.Labels[LabelNetworkSandbox]; id != "" {
			used[id] = true
		}
	}
	for _, c := range res.Items {
		if c.Labels[LabelSandbox] == "true" && !used[c.ID] {
			r.removeContainer(c.ID)
		}
	}
}

// ensureImage imports the sandbox image unless the engine has it.
func (p *sandboxPool) ensureImage(ctx context.Context, prog []byte) error {
	r := p.r
	ctx, cancel := context.WithTimeout(ctx, sandboxCallTimeout)
	defer cancel()
	if _, err := r.cli.ImageInspect(ctx, sandboxImage); err == nil {
		return nil
	} else if !cerrdefs.IsNotFound(err) {
		return err
	}
	return importImage(ctx, r.cli, sandboxImage, []ImageFile{{Name: "pause", Data: prog}},
		[]string{`ENTRYPOINT ["/pause"]`}, "Berth network sandbox")
}

// sleep waits d, or less if ctx ends first; it reports whether ctx lives.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// pauseProgram is a static Linux executable for arch that sleeps until it
// is killed, or nil for an architecture without one. It is one ELF header,
// one loadable segment and a loop around a system call that blocks with
// nothing to wait for: pause(2) on amd64, ppoll(NULL, 0, NULL, NULL) on
// arm64 (which has no pause).
func pauseProgram(arch string) []byte {
	var machine uint16
	var code []byte
	switch arch {
	case "amd64":
		machine = 62 // EM_X86_64
		code = []byte{
			0xb8, 0x22, 0x00, 0x00, 0x00, // mov eax, 34 (pause)
			0x0f, 0x05, // syscall
			0xeb, 0xf7, // jmp back to the mov
		}
	case "arm64":
		machine = 183 // EM_AARCH64
		for _, ins := range []uint32{
			0xd2800000, // mov x0, #0
			0xd2800001, // mov x1, #0
			0xd2800002, // mov x2, #0
			0xd2800003, // mov x3, #0
			0xd2800928, // mov x8, #73 (ppoll)
			0xd4000001, // svc #0
			0x17fffffa, // b back to the first mov
		} {
			code = binary.LittleEndian.AppendUint32(code, ins)
		}
	default:
		return nil
	}
	const base, ehsize, phsize = 0x400000, 64, 56
	size := uint64(ehsize + phsize + len(code))
	le := binary.LittleEndian
	b := []byte{0x7f, 'E', 'L', 'F', 2 /* 64-bit */, 1 /* little-endian */, 1 /* version */, 0 /* System V */}
	b = append(b, make([]byte, 8)...)          // ident padding
	b = le.AppendUint16(b, 2)                  // e_type: executable
	b = le.AppendUint16(b, machine)            // e_machine
	b = le.AppendUint32(b, 1)                  // e_version
	b = le.AppendUint64(b, base+ehsize+phsize) // e_entry: the code
	b = le.AppendUint64(b, ehsize)             // e_phoff
	b = le.AppendUint64(b, 0)                  // e_shoff: no sections
	b = le.AppendUint32(b, 0)                  // e_flags
	b = le.AppendUint16(b, ehsize)             // e_ehsize
	b = le.AppendUint16(b, phsize)             // e_phentsize
	b = le.AppendUint16(b, 1)                  // e_phnum
	b = le.AppendUint16(b, 0)                  // e_shentsize
	b = le.AppendUint16(b, 0)                  // e_shnum
	b = le.AppendUint16(b, 0)                  // e_shstrndx
	b = le.AppendUint32(b, 1)                  // p_type: PT_LOAD
	b = le.AppendUint32(b, 5)                  // p_flags: read, execute
	b = le.AppendUint64(b, 0)                  // p_offset: the whole file
	b = le.AppendUint64(b, base)               // p_vaddr
	b = le.AppendUint64(b, base)               // p_paddr
	b = le.AppendUint64(b, size)               // p_filesz
	b = le.AppendUint64(b, size)               // p_memsz
	b = le.AppendUint64(b, 0x1000)             // p_align
	return append(b, code...)
}
