// Package freeze tests frozen backends (spawn idle_action "freeze") end to
// end, on the real berth binary with the process runtime (SIGSTOP of the
// group, and cgroup v2 where the host has a writable hierarchy) and on
// Docker Engine (docker pause): a frozen backend uses no CPU, the next
// request or connect thaws it with its memory intact, WebSocket clients
// that left reconnect to it, and max_frozen_seconds stops it with its
// final save. Under CI=true the Docker cases fail without an engine.
package freeze
