//go:build !unix

package file

import (
	"context"
	"errors"
	"os"
)

func flock(ctx context.Context, f *os.File) error {
	return errors.New("the file blob store needs flock(2), available on unix systems only")
}
