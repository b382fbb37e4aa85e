package blobtest

import (
	"os"
	"testing"
)

// Env returns the values of the environment variables an adapter test needs
// to reach its real server. When one is missing the test fails if $CI is set
// (CI must never skip silently), and is skipped otherwise, with a message
// that says how to start the servers.
func Env(t *testing.T, names ...string) []string {
	t.Helper()
	vals := make([]string, len(names))
	for i, n := range names {
		vals[i] = os.Getenv(n)
		if vals[i] != "" {
			continue
		}
		msg := n + " is not set: run `source .ci/services.sh` from the repository root " +
			"(it starts PostgreSQL and an S3 server, versitygw, on loopback and exports " +
			"BERTH_TEST_POSTGRES_URL, BERTH_TEST_S3_* and AWS_*), then run the tests again"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return vals
}
