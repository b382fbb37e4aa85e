package e2e

import "testing"

// TestOnPostgres runs the single-node suites again with the PostgreSQL
// store, which makes Berth a replica (a node with a lease, the store's
// feed): one Berth on PostgreSQL must behave as one on SQLite. Left out:
// the tests that kill Berth and expect its backends to outlive it, which a
// replica's never do (they die with it; see DESIGN.md, "Replicas").
func TestOnPostgres(t *testing.T) {
	for name, test := range map[string]func(*testing.T){
		"Keys": TestKeys, "Lifecycle": TestLifecycle, "Tokens": TestTokens, "Proxy": TestProxy,
		"Logs": TestLogs, "Events": TestEvents, "StateBlobDemo": TestStateBlobDemo,
		"StateFencing": TestStateFencing, "StateRestore": TestStateRestore, "ConnectWaitFailed": TestConnectWaitFailed,
	} {
		t.Run(name, test)
	}
}
