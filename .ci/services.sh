# shellcheck shell=bash
# Starts the servers that Berth's adapter tests need, on loopback, and exports
# where to find them. Meant to be SOURCED (by .ci/run, or by a developer):
#
#   source .ci/services.sh && go test -race ./...
#
# It installs PostgreSQL 15 from Debian when missing, builds versitygw (an
# S3-compatible server) from the Go module proxy when missing, starts both
# under $BERTH_CI_DIR (default /tmp/berth-ci), creates a database and a bucket
# and exports:
#
#   BERTH_TEST_POSTGRES_URL  postgres://postgres@127.0.0.1:PORT/berth_test?sslmode=disable
#   BERTH_TEST_S3_ENDPOINT   http://127.0.0.1:PORT
#   BERTH_TEST_S3_BUCKET     berth-test
#   BERTH_TEST_S3_CMD        the command line that (re)starts versitygw, so a
#                            test can stop the server and start it again
#   BERTH_TEST_S3_DIR        versitygw's data directory
#   BERTH_TEST_S3_PIDFILE    holds the PID of the versitygw this script started
#   AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION
#
# Idempotent: sourcing it again while the servers answer only re-exports.
# `berth_services_stop` (defined here) stops both. Needs root (apt-get,
# runuser) on Debian 12; never calls `exit`, so it cannot end the caller's shell.

berth_services_stop() {
	local dir="${BERTH_CI_DIR:-/tmp/berth-ci}"
	if [ -f "$dir/s3.pid" ]; then
		kill "$(cat "$dir/s3.pid")" 2>/dev/null || true
		rm -f "$dir/s3.pid"
	fi
	if [ -f "$dir/pg/PG_VERSION" ]; then
		runuser -u postgres -- "${BERTH_PG_BIN:-/usr/lib/postgresql/15/bin}/pg_ctl" -D "$dir/pg" -m fast -w stop >/dev/null 2>&1 || true
	fi
	rm -f "$dir/env"
}

_berth_services() {
	local dir="${BERTH_CI_DIR:-/tmp/berth-ci}"
	local pgbin="${BERTH_PG_BIN:-/usr/lib/postgresql/15/bin}"
	local gobin="${BERTH_CI_GOBIN:-/var/cache/berth-ci/bin}"
	local vgw_version="v1.8.0"
	local bucket="berth-test"
	local ak="berthtestaccess" sk="berthtestsecret0123456789"
	local region="us-east-1"

	say() { echo "services: $*"; }
	fail() { echo "services: ERROR: $*" >&2; return 1; }

	# free_port prints a TCP port on 127.0.0.1 that nothing listens on.
	free_port() {
		local p i
		for i in $(seq 1 200); do
			p=$(( 20000 + (RANDOM * 32768 + RANDOM) % 30000 ))
			if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
				echo "$p"
				return 0
			fi
		done
		return 1
	}

	pg_ready() { # $1 = port
		runuser -u postgres -- "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$1" 2>/dev/null
	}
	s3_ready() { # $1 = endpoint; any HTTP answer (even 403) means it is up
		local code
		code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1/" 2>/dev/null) || return 1
		[ "$code" != "000" ]
	}

	# Already running (sourced before)? Re-export and stop here.
	if [ -f "$dir/env" ]; then
		# shellcheck disable=SC1091
		. "$dir/env"
		local pgport="${BERTH_TEST_POSTGRES_URL##*127.0.0.1:}"
		pgport="${pgport%%/*}"
		if pg_ready "$pgport" && s3_ready "$BERTH_TEST_S3_ENDPOINT"; then
			say "PostgreSQL and versitygw already running ($BERTH_TEST_POSTGRES_URL, $BERTH_TEST_S3_ENDPOINT)"
			return 0
		fi
		say "a previous run's servers do not answer; starting afresh"
	fi
	# Whatever an earlier, half-finished run left behind would hold the
	# PostgreSQL lock or a stale versitygw; stop it first.
	berth_services_stop
	mkdir -p "$dir" || return 1

	# --- PostgreSQL ---------------------------------------------------------
	if [ ! -x "$pgbin/initdb" ]; then
		say "installing PostgreSQL from Debian (apt-get install postgresql)"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq >/dev/null || fail "apt-get update failed" || return 1
		apt-get install -y -qq --no-install-recommends postgresql >/dev/null ||
			fail "apt-get install postgresql failed" || return 1
		[ -x "$pgbin/initdb" ] || fail "no $pgbin/initdb after installing postgresql (set BERTH_PG_BIN)" || return 1
	fi
	id postgres >/dev/null 2>&1 || useradd --system --home-dir "$dir" postgres || return 1

	local pgdir="$dir/pg" pgport
	if [ ! -f "$pgdir/PG_VERSION" ]; then
		say "initdb $pgdir"
		rm -rf "$pgdir"
		mkdir -p "$pgdir" && chown postgres: "$pgdir" && chmod 700 "$pgdir" || return 1
		runuser -u postgres -- "$pgbin/initdb" -D "$pgdir" -A trust -U postgres -E UTF8 >"$dir/initdb.log" 2>&1 ||
			{ cat "$dir/initdb.log" >&2; fail "initdb failed"; return 1; }
	fi
	pgport=$(free_port) || fail "no free port for PostgreSQL" || return 1
	say "starting PostgreSQL on 127.0.0.1:$pgport"
	touch "$dir/pg.log" && chown postgres: "$dir/pg.log" || return 1
	runuser -u postgres -- "$pgbin/pg_ctl" -D "$pgdir" -l "$dir/pg.log" -w -t 60 \
		-o "-c listen_addresses=127.0.0.1 -p $pgport -k $pgdir -c max_connections=200 -c fsync=off" start >/dev/null ||
		{ tail -20 "$dir/pg.log" >&2; fail "PostgreSQL did not start (log: $dir/pg.log)"; return 1; }
	local i
	for i in $(seq 1 60); do pg_ready "$pgport" && break; sleep 0.5; done
	pg_ready "$pgport" || fail "PostgreSQL does not answer on port $pgport" || return 1
	local have
	have=$(runuser -u postgres -- "$pgbin/psql" -h 127.0.0.1 -p "$pgport" -U postgres -tAc \
		"SELECT 1 FROM pg_database WHERE datname='berth_test'" postgres) || have=""
	if [ "$have" != 1 ]; then
		runuser -u postgres -- "$pgbin/createdb" -h 127.0.0.1 -p "$pgport" -U postgres berth_test ||
			fail "createdb berth_test failed" || return 1
	fi

	# --- versitygw (S3) -----------------------------------------------------
	local vgw="$gobin/versitygw"
	if [ ! -x "$vgw" ]; then
		say "building versitygw $vgw_version into $gobin (go install, a few minutes the first time)"
		mkdir -p "$gobin" || return 1
		GOBIN="$gobin" CGO_ENABLED=0 go install "github.com/versity/versitygw/cmd/versitygw@$vgw_version" ||
			fail "go install versitygw failed" || return 1
	fi
	local s3dir="$dir/s3" s3port
	mkdir -p "$s3dir" || return 1
	s3port=$(free_port) || fail "no free port for versitygw" || return 1
	local s3cmd="$vgw --port 127.0.0.1:$s3port --access $ak --secret $sk --region $region posix $s3dir"
	say "starting versitygw on 127.0.0.1:$s3port (data $s3dir)"
	# setsid: its own session, so job control and the caller's signals leave it be.
	# shellcheck disable=SC2086
	setsid $s3cmd >>"$dir/s3.log" 2>&1 </dev/null &
	echo $! >"$dir/s3.pid"
	local endpoint="http://127.0.0.1:$s3port"
	for i in $(seq 1 100); do s3_ready "$endpoint" && break; sleep 0.1; done
	s3_ready "$endpoint" || { tail -20 "$dir/s3.log" >&2; fail "versitygw does not answer (log: $dir/s3.log)"; return 1; }

	# Create the bucket with a SigV4-signed PUT (curl ≥ 7.75); 409 = exists.
	local code
	code=$(curl -s -o "$dir/mkbucket.out" -w '%{http_code}' -X PUT \
		-H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" \
		--aws-sigv4 "aws:amz:$region:s3" --user "$ak:$sk" "$endpoint/$bucket") || code=000
	case "$code" in
	200 | 409) ;;
	*) cat "$dir/mkbucket.out" >&2; fail "creating bucket $bucket: HTTP $code"; return 1 ;;
	esac

	cat >"$dir/env" <<EOF
export BERTH_TEST_POSTGRES_URL='postgres://postgres@127.0.0.1:$pgport/berth_test?sslmode=disable'
export BERTH_TEST_S3_ENDPOINT='$endpoint'
export BERTH_TEST_S3_BUCKET='$bucket'
export BERTH_TEST_S3_CMD='$s3cmd'
export BERTH_TEST_S3_DIR='$s3dir'
export BERTH_TEST_S3_PIDFILE='$dir/s3.pid'
export AWS_ACCESS_KEY_ID='$ak'
export AWS_SECRET_ACCESS_KEY='$sk'
export AWS_REGION='$region'
EOF
	# shellcheck disable=SC1091
	. "$dir/env"
	say "ready: BERTH_TEST_POSTGRES_URL=$BERTH_TEST_POSTGRES_URL BERTH_TEST_S3_ENDPOINT=$BERTH_TEST_S3_ENDPOINT bucket=$bucket"
}

# `if` keeps a caller's `set -e` from ending its shell before the message below.
if _berth_services; then _berth_services_rc=0; else _berth_services_rc=$?; fi
# Pebble, the ACME test server: built once here, started by each test (.ci/pebble.sh).
. "$(dirname "${BASH_SOURCE[0]}")/pebble.sh" && { _berth_pebble || _berth_services_rc=1; } && unset -f _berth_pebble
unset -f _berth_services say fail free_port pg_ready s3_ready
if [ "$_berth_services_rc" -ne 0 ]; then
	unset _berth_services_rc
	echo "services: could not start the test servers (see above)" >&2
	return 1 2>/dev/null || false
fi
unset _berth_services_rc
