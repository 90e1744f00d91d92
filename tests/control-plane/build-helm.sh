#!/usr/bin/env bash
# Builds the upstream helm CLI from the Go module proxy (its own module, helm/go.mod) into a
# cache outside the clone, keyed by its version, and prints the path of the binary. A second
# run is free.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/helm"

module_version() { awk -v m="$1" '$1 == m && $2 ~ /^v/ { print $2; exit }' go.mod; }
helm_version="$(module_version helm.sh/helm/v3)"
# helm reports the Kubernetes version of its client libraries as the default for templates
# (as its own Makefile sets it): v0.37.x is Kubernetes 1.37.
client_go="$(module_version k8s.io/client-go)"
IFS=. read -r _ k8s_minor _ <<<"${client_go#v}"
go_version="$(go env GOVERSION)"
cache_root="${JIT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/jit-operator}"
bin_dir="$cache_root/bin/helm-${helm_version}_k8s-1.${k8s_minor}_${go_version}"

if [[ -x "$bin_dir/helm" ]]; then
	echo "$bin_dir/helm"
	exit 0
fi
mkdir -p "$bin_dir"
exec 9>"$cache_root/build-helm.lock"
flock 9
if [[ -x "$bin_dir/helm" ]]; then
	echo "$bin_dir/helm"
	exit 0
fi
staging="$(mktemp -d "$bin_dir/.build.XXXXXX")"
trap 'rm -rf "$staging"' EXIT

echo "building helm $helm_version into $bin_dir" >&2
export GOFLAGS="-mod=mod -trimpath"
export CGO_ENABLED=0
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version"
for package in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
	ldflags+=" -X $package.k8sVersionMajor=1 -X $package.k8sVersionMinor=$k8s_minor"
done
go build -ldflags "$ldflags" -o "$staging/helm" helm.sh/helm/v3/cmd/helm
mv "$staging/helm" "$bin_dir/helm"
echo "$bin_dir/helm"
