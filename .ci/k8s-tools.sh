#!/usr/bin/env bash
# Builds, once, the Kubernetes tools that the kubernetes runtime's tests run
# (a real kube-apiserver and etcd, kwok to drive Pod lifecycles, and a real
# kubelet for e2e/kubelet), from
# source through the Go module proxy, and caches them outside the clone:
#
#   $BERTH_K8S_TOOLS (default /var/cache/berth-ci/k8s)/
#     kube-apiserver   k8s.io/kubernetes v1.37.2
#     kubelet          k8s.io/kubernetes v1.37.2 (e2e/kubelet runs it)
#     etcd             go.etcd.io/etcd/server/v3 v3.7.3
#     kwok             sigs.k8s.io/kwok v0.8.0
#
# Idempotent: a tool already in the cache (with its version stamp) is not
# rebuilt, so a warm run takes well under a second. Run it directly, or
# source it to get BERTH_K8S_TOOLS exported:
#
#   bash .ci/k8s-tools.sh            # build what is missing
#   source .ci/k8s-tools.sh          # same, and export BERTH_K8S_TOOLS
#
# Builds run one after the other (the machine has 2 cores); a cold run takes
# about 7 minutes for kube-apiserver, and a few more for the kubelet, which
# shares most of its packages (built once, in the same module). Progress goes
# to stderr.

_berth_k8s_tools() {
	local dir="${BERTH_K8S_TOOLS:-/var/cache/berth-ci/k8s}"
	local kube_version="v1.37.2" staging_version="v0.37.2"
	local etcd_version="v3.7.3" kwok_version="v0.8.0"
	mkdir -p "$dir" || return 1
	export PATH="/usr/local/go/bin:$PATH"

	_k8s_have() { [ -x "$dir/$1" ] && [ "$(cat "$dir/$1.version" 2>/dev/null)" = "$2" ]; }
	_k8s_log() { echo "k8s-tools: $*" >&2; }

	if ! _k8s_have etcd "$etcd_version"; then
		# etcd's server module has replace directives, which `go install
		# pkg@version` refuses: build it from a throwaway main module.
		_k8s_log "building etcd $etcd_version"
		local t=$SECONDS mod="$dir/.build-etcd"
		rm -rf "$mod" && mkdir -p "$mod" || return 1
		(
			set -e
			cd "$mod"
			export GOFLAGS=-buildvcs=false GOTOOLCHAIN=local
			go mod init berthci/etcd >/dev/null 2>&1
			go get "go.etcd.io/etcd/server/v3@$etcd_version"
			CGO_ENABLED=0 go build -trimpath -o "$dir/etcd" go.etcd.io/etcd/server/v3
		) || { _k8s_log "etcd build failed (work dir $mod)"; return 1; }
		echo "$etcd_version" >"$dir/etcd.version"
		rm -rf "$mod"
		_k8s_log "etcd built in $((SECONDS - t))s"
	fi

	if ! _k8s_have kwok "$kwok_version"; then
		_k8s_log "building kwok $kwok_version"
		local t=$SECONDS
		GOBIN="$dir/.gobin" GOFLAGS=-buildvcs=false CGO_ENABLED=0 \
			go install "sigs.k8s.io/kwok/cmd/kwok@$kwok_version" || return 1
		mv "$dir/.gobin/kwok" "$dir/kwok" || return 1
		echo "$kwok_version" >"$dir/kwok.version"
		_k8s_log "kwok built in $((SECONDS - t))s"
	fi

	# kube-apiserver and kubelet come from k8s.io/kubernetes: build the ones
	# missing from one throwaway module, so the packages they share compile
	# once. Each keeps its own stamp: a cached one is not rebuilt.
	local k8s_missing="" c
	for c in kube-apiserver kubelet; do
		_k8s_have "$c" "$kube_version" || k8s_missing="$k8s_missing $c"
	done
	if [ -n "$k8s_missing" ]; then
		# k8s.io/kubernetes is not meant to be a dependency: its go.mod
		# requires the staging modules (k8s.io/api, k8s.io/apiserver, …) at
		# v0.0.0 and replaces them with ./staging paths. In a throwaway main
		# module those replaces are ignored, so require each staging module
		# at its published release instead.
		_k8s_log "building$k8s_missing $kube_version (about 5 minutes each, cold)"
		local t=$SECONDS mod="$dir/.build-kubernetes"
		rm -rf "$mod" && mkdir -p "$mod" || return 1
		(
			set -e
			cd "$mod"
			export GOFLAGS=-buildvcs=false GOTOOLCHAIN=local
			gomod=$(go mod download -json "k8s.io/kubernetes@$kube_version" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
			[ -n "$gomod" ]
			{
				echo "module berthci/kubernetes"
				echo
				echo "go $(go env GOVERSION | sed 's/^go//')"
				echo
				echo "require ("
				echo "	k8s.io/kubernetes $kube_version"
				grep -E '^[[:space:]]+k8s\.io/[a-z0-9-]+ v0\.0\.0$' "$gomod" |
					awk -v v="$staging_version" '{print "\t" $1 " " v}'
				echo ")"
			} >go.mod
			{
				printf '//go:build tools\n\npackage tools\n\nimport (\n'
				for c in $k8s_missing; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$c"; done
				printf ')\n'
			} >tools.go
			go mod tidy -e >/dev/null 2>&1 || true
			# tidy drops what the build tag hides; resolve the graph for
			# the packages we build instead.
			pkgs=""
			for c in $k8s_missing; do pkgs="$pkgs k8s.io/kubernetes/cmd/$c@$kube_version"; done
			go get $pkgs
			# Without these the binaries report v0.0.0-master+$Format:%H$,
			# which kubectl cannot parse and a Node shows as its version.
			v=k8s.io/component-base/version
			minor=$(echo "$kube_version" | cut -d. -f2)
			# -s -w: no symbol table or DWARF, which the tests never read and
			# which make linking these large binaries slower.
			ldflags="-s -w -X $v.gitVersion=$kube_version -X $v.gitMajor=1 -X $v.gitMinor=$minor -X $v.gitTreeState=clean"
			for c in $k8s_missing; do
				_k8s_log "linking $c"
				CGO_ENABLED=0 nice -n 10 go build -trimpath -ldflags "$ldflags" -o "$dir/$c" "k8s.io/kubernetes/cmd/$c"
				echo "$kube_version" >"$dir/$c.version"
			done
		) || { _k8s_log "${k8s_missing# } build failed (work dir $mod)"; return 1; }
		rm -rf "$mod"
		_k8s_log "${k8s_missing# } built in $((SECONDS - t))s"
	fi
	rm -rf "$dir/.gobin"
	export BERTH_K8S_TOOLS="$dir"
	_k8s_log "tools ready in $dir"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
	set -uo pipefail
	_berth_k8s_tools || exit 1
else
	_berth_k8s_tools
fi
