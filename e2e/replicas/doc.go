// Package replicas tests several `berth serve` processes sharing one
// PostgreSQL store, as replicas on several hosts would: one backend per key
// across them, any proxy to any backend, leases that move keys off a dead
// or cut-off node, and the node commands. It needs the PostgreSQL that
// .ci/run starts (BERTH_TEST_POSTGRES_URL), and for the tests of Docker
// backends and of replicas as containers (TestReplicas_NetworkPartition:
// hosts of their own, cut off by `docker network disconnect`) a Docker
// Engine; under CI=true it fails without them.
package replicas
