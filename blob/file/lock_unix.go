//go:build unix

package file

import (
	"context"
	"errors"
	"os"
	"syscall"
	"time"
)

// flock takes an exclusive flock(2) on f. It polls with LOCK_NB rather than
// blocking so that a caller's context can end the wait; critical sections
// are a few small writes long, so polling costs little.
func flock(ctx context.Context, f *os.File) error {
	fd := int(f.Fd())
	wait := 100 * time.Microsecond
	for {
		err := syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			return err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		if wait < 10*time.Millisecond {
			wait *= 2
		}
	}
}
