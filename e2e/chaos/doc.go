// Package chaos holds Berth's crash tests: they build the real berth binary
// and internal/testbackend, start `berth serve` with many spawns in flight,
// SIGKILL it at a random moment, start it again on the same data dir, and
// audit what runs against what the records say. The backends themselves
// witness the one-holder-per-key promise: each takes a kernel lock named by
// its key (testbackend's TB_LOCK_DIR) and appends its life to an audit file
// (TB_AUDIT_FILE), so a second live holder is caught even when Berth's own
// records say nothing runs.
//
// Like the e2e package, it drives Berth only from the outside (control API,
// proxy, signals, /proc, the Docker CLI) and must never reach into the
// server's packages to make something happen; the only server-side packages
// it uses are api and the domain types. It never fixes what it finds: it
// kills the leftovers of each iteration so one failure does not cascade.
//
// Run it as CI does (both runtimes in parallel; a few minutes), or one
// runtime, more iterations, or the kill moments of an earlier run:
//
//	go test -race ./e2e/chaos
//	go test ./e2e/chaos -v -run 'SIGKILLWhileSpawning/process' -chaos.n=100
//	go test ./e2e/chaos -v -chaos.seed=N -chaos.keep
//
// Each iteration logs what it saw: connects sent, records after the
// restart (live, lost, other), orphans, double holders, untruthful records,
// what a graceful stop left; the runtime's subtest logs the totals.
//
// A test that needs Docker fails when CI is set and otherwise skips, saying
// how to get it.
package chaos
