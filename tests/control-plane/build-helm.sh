#!/usr/bin/env bash
# Builds the upstream helm CLI from the Go module proxy (its own module, helm/go.mod) into a
# cache outside the clone, keyed by its version, and prints the path of the binary. A second
# run is free.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/helm"

helm_version="$(awk '$1 == "helm.sh/helm/v3" && $2 ~ /^v/ { print $2; exit }' go.mod)"
go_version="$(go env GOVERSION)"
cache_root="${JIT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/jit-operator}"
bin_dir="$cache_root/bin/helm-${helm_version}_${go_version}"

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
# helm reports its version from this variable.
go build -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version" \
	-o "$staging/helm" helm.sh/helm/v3/cmd/helm
mv "$staging/helm" "$bin_dir/helm"
echo "$bin_dir/helm"
