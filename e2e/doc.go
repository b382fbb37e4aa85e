// Package e2e holds Berth's end-to-end tests: they build the real berth
// binary (and internal/testbackend), start it on loopback ports, and drive it
// only from the outside — control API over HTTP, the proxy over HTTP and
// WebSocket, the CLI as a subprocess, the demo in a real browser. They must
// never reach into the server's packages to make something happen; the only
// server-side package they use is api, the public wire contract (and token,
// to mint an already-expired token with a key the test chose).
//
// Every test that needs something missing (a browser) fails when CI is set
// and otherwise skips with the command that installs it.
package e2e
