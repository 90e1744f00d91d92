#!/usr/bin/env bash
# Builds the upstream kube-apiserver and etcd from the Go module proxy into a cache outside
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

if [[ -x "$bin_dir/kube-apiserver" && -x "$bin_dir/etcd" ]]; then
	echo "$bin_dir"
	exit 0
fi

mkdir -p "$bin_dir"
# One build at a time per machine: a second caller waits, then finds the binaries.
exec 9>"$cache_root/build.lock"
flock 9
if [[ -x "$bin_dir/kube-apiserver" && -x "$bin_dir/etcd" ]]; then
	echo "$bin_dir"
	exit 0
fi
staging="$(mktemp -d "$bin_dir/.build.XXXXXX")"
trap 'rm -rf "$staging"' EXIT

# kube-apiserver reads its version from these variables; without them it reports v0.0.0-master
# and refuses feature gates that depend on the emulated version.
IFS=. read -r major minor _ <<<"${k8s_version#v}"
build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
version_pkg=k8s.io/component-base/version
k8s_ldflags="-s -w \
 -X $version_pkg.gitVersion=$k8s_version \
 -X $version_pkg.gitMajor=$major \
 -X $version_pkg.gitMinor=$minor \
 -X $version_pkg.gitTreeState=clean \
 -X $version_pkg.buildDate=$build_date"

echo "building kube-apiserver $k8s_version and etcd $etcd_version into $bin_dir" >&2
# Module downloads are verified against the committed go.sum; -trimpath keeps paths out.
export GOFLAGS="-mod=mod -trimpath"
export CGO_ENABLED=0
go build -ldflags "$k8s_ldflags" -o "$staging/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
go build -ldflags "-s -w" -o "$staging/etcd" go.etcd.io/etcd/server/v3

# Rename into place only when both exist, so an interrupted build never looks complete.
mv "$staging/etcd" "$bin_dir/etcd"
mv "$staging/kube-apiserver" "$bin_dir/kube-apiserver"
echo "$bin_dir"
