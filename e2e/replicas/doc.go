// Package replicas tests several `berth serve` processes sharing one
// PostgreSQL store, as replicas on several hosts would: one backend per key
// across them, any proxy to any backend, leases that move keys off a dead
// or cut-off node, and the node commands. It needs the PostgreSQL that
// .ci/run starts (BERTH_TEST_POSTGRES_URL); under CI=true it fails without
// it.
package replicas
