package runtime

import (
	"context"
	"io"
)

// Freezer is implemented by runtimes that can freeze an instance in place:
// every process of it stops being scheduled, and keeps its memory, open
// files and sockets (connections to it wait in the kernel's queues) until
// it is thawed. Berth freezes idle backends whose spawn asks for it
// (idle_action "freeze") and thaws them before it forwards them traffic.
//
// A frozen instance cannot handle a signal, so Berth thaws it before it
// stops it; Stop and Cleanup of a frozen instance must still leave
// nothing behind (a Berth that died while it was frozen).
type Freezer interface {
	// Freeze returns once no process of the instance runs. Freezing a
	// frozen instance is no error; one that is gone returns ErrGone.
	Freeze(ctx context.Context, h *Handle) error
	// Thaw returns once the instance runs again. Thawing an instance that
	// is not frozen is no error, so a restarted Berth thaws every
	// instance it re-adopts without knowing which were frozen.
	Thaw(ctx context.Context, h *Handle) error
	// Memory reports the memory the instance holds, in bytes: resident
	// memory (and, where the runtime counts it, page cache) charged to it.
	// A frozen instance's does not change, so Berth reads it once.
	Memory(ctx context.Context, h *Handle) (int64, error)
}

// Hibernator is the next step after a Freezer, and no runtime implements
// it yet (docs/DESIGN.md, "Hibernate (not built)", says why): it writes a
// running instance's memory and process tree to an image (CRIU
// checkpoint) and ends the instance, so a hibernated backend holds no
// memory at all and may be restored on another node; Restore starts a new
// instance from the image (CRIU restore), as Start would have made it,
// with its memory as it was.
//
// Berth would keep the image in the blob store beside the key's state and
// record it like a final save: the key stays held while the image is not
// durable, and a restore happens only under the key's next fencing token.
type Hibernator interface {
	// Hibernate checkpoints the instance into w and stops it. On error the
	// instance still runs, unchanged.
	Hibernate(ctx context.Context, h *Handle, w io.Writer) error
	// Restore starts an instance from an image Hibernate wrote, for spec
	// (a new backend id, port and fencing token: the restored program
	// sees its environment as it was, so the backend must read its
	// identity from the backend API, not from its first environment).
	Restore(ctx context.Context, spec Spec, image io.Reader) (*Handle, error)
}
