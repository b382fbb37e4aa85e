// Package rawio reads and writes non-blocking sockets with raw system
// calls, for the proxy's goroutine path (when a read or write would not
// block) and its event loops.
package rawio
