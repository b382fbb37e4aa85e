package e2e

import "testing"

// TestOnPostgres runs the single-node suites again with the PostgreSQL
// store, which makes Berth a replica (a node with a lease, the store's
// feed): one Berth on PostgreSQL must behave as one on SQLite. Left out:
// the tests that kill Berth and expect its backends to outlive it, which a
// replica's never do (they die with it; see DESIGN.md, "Replicas"):
// RestartAfterSIGKILL and StateS3OutageRestart; DevLeavesNothing, which is
// about `berth dev` and its SQLite data dir; the browser and Kubernetes
// suites, which test no store.
func TestOnPostgres(t *testing.T) {
	for name, test := range map[string]func(*testing.T){
		"Keys": TestKeys, "Lifecycle": TestLifecycle, "Tokens": TestTokens, "Proxy": TestProxy,
		"Logs": TestLogs, "Events": TestEvents, "StateBlobDemo": TestStateBlobDemo,
		"StateFencing": TestStateFencing, "StateRestore": TestStateRestore, "ConnectWaitFailed": TestConnectWaitFailed,
		"BadInput": TestBadInput, "ServeAPIKey": TestServeAPIKey, "CLI": TestCLI, "CLIWithAPIKey": TestCLIWithAPIKey,
		"Docker": TestDocker, "StartupTimeoutHint": TestStartupTimeoutHint, "MethodNotAllowed": TestMethodNotAllowed,
		"Metrics": TestMetrics, "ProxyFirstRequestOnProbeConnection": TestProxy_FirstRequestOnProbeConnection,
		"StateDir": TestStateDir, "StateVolume": TestStateVolume, "StateSecretOracle": TestStateSecretOracle,
		"StateConcurrentSaves": TestStateConcurrentSaves, "StateLarge": TestStateLarge, "StateTooLarge": TestStateTooLarge,
		"StateS3Outage": TestStateS3Outage,
	} {
		t.Run(name, test)
	}
}
