#!/usr/bin/env bash
# Builds the upstream kube-apiserver, kubectl and etcd from the Go module proxy into a cache outside
# the clone, keyed by their versions, and prints the cache directory. A second run is free.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

module_version() { awk -v m="$1" '$1 == m && $2 ~ /^v/ { print $2; exit }' go.mod; }
k8s_version="$(module_version k8s.io/kubernetes)"
etcd_version="$(module_version go.etcd.io/etcd/server/v3)"
go_version="$(go env GOVERSION)"

cache_root="${JIT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/jit-operator}"
bin_dir="$cache_root/bin/kubernetes-${k8s_version}_etcd-${etcd_version}_${go_version}"

binaries=(kube-apiserver etcd kubectl)
complete() {
	local binary
	for binary in "${binaries[@]}"; do
		[[ -x "$bin_dir/$binary" ]] || return 1
	done
}

if complete; then
	echo "$bin_dir"
	exit 0
fi

mkdir -p "$bin_dir"
# One build at a time per machine: a second caller waits, then finds the binaries.
exec 9>"$cache_root/build.lock"
flock 9
if complete; then
	echo "$bin_dir"
	exit 0
fi
staging="$(mktemp -d "$bin_dir/.build.XXXXXX")"
trap 'rm -rf "$staging"' EXIT

# kube-apiserver and kubectl read their version from these variables; without them they report
# v0.0.0-master and the API server refuses feature gates that depend on the emulated version.
IFS=. read -r major minor _ <<<"${k8s_version#v}"
build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
k8s_ldflags="-s -w"
for version_pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	k8s_ldflags+=" -X $version_pkg.gitVersion=$k8s_version -X $version_pkg.gitMajor=$major"
	k8s_ldflags+=" -X $version_pkg.gitMinor=$minor -X $version_pkg.gitTreeState=clean"
	k8s_ldflags+=" -X $version_pkg.buildDate=$build_date"
done

echo "building kube-apiserver and kubectl $k8s_version and etcd $etcd_version into $bin_dir" >&2
# Module downloads are verified against the committed go.sum; -trimpath keeps paths out.
export GOFLAGS="-mod=mod -trimpath"
export CGO_ENABLED=0
go build -ldflags "$k8s_ldflags" -o "$staging/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
go build -ldflags "$k8s_ldflags" -o "$staging/kubectl" k8s.io/kubernetes/cmd/kubectl
go build -ldflags "-s -w" -o "$staging/etcd" go.etcd.io/etcd/server/v3

# Move into place only when all exist, so an interrupted build never looks complete.
for binary in "${binaries[@]}"; do
	mv "$staging/$binary" "$bin_dir/$binary"
done
echo "$bin_dir"
