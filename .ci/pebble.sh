# shellcheck shell=bash
# Builds Pebble (Let's Encrypt's ACME test server) and its challenge test
# server (DNS for DNS-01, and the A records that send HTTP-01/TLS-ALPN-01
# validations to loopback) from the Go module proxy into $BERTH_CI_GOBIN
# (default /var/cache/berth-ci/bin), outside the clone, once; and exports
#
#   BERTH_TEST_PEBBLE          the pebble binary
#   BERTH_TEST_CHALLTESTSRV    the pebble-challtestsrv binary
#
# Tests start their own instances from these (internal/pebbletest): each
# test gets a CA whose validation ports are the ones its Berth listens on.
# Sourced by .ci/services.sh; never calls exit.

_berth_pebble() {
	local gobin="${BERTH_CI_GOBIN:-/var/cache/berth-ci/bin}"
	local version="v2.10.3"
	local stamp="$gobin/.pebble-$version"
	if [ ! -x "$gobin/pebble" ] || [ ! -x "$gobin/pebble-challtestsrv" ] || [ ! -f "$stamp" ]; then
		echo "pebble: building pebble $version into $gobin (go install)"
		mkdir -p "$gobin" || return 1
		GOBIN="$gobin" CGO_ENABLED=0 go install \
			"github.com/letsencrypt/pebble/v2/cmd/pebble@$version" \
			"github.com/letsencrypt/pebble/v2/cmd/pebble-challtestsrv@$version" ||
			{ echo "pebble: ERROR: go install pebble failed" >&2; return 1; }
		touch "$stamp"
	fi
	export BERTH_TEST_PEBBLE="$gobin/pebble"
	export BERTH_TEST_CHALLTESTSRV="$gobin/pebble-challtestsrv"
	echo "pebble: ready: $BERTH_TEST_PEBBLE, $BERTH_TEST_CHALLTESTSRV"
}
