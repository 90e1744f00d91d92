#!/usr/bin/env bash
# Builds the upstream Mailpit SMTP server from the Go module proxy (its own module,
# mailpit/go.mod) into a cache outside the clone, keyed by its version and the Go version, and
# prints the path of the binary. A second run is free. The email delivery tests send through it
# and read what arrived from its HTTP API.
#
#   mailpit.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/mailpit"

mailpit_version="$(awk '$1 == "github.com/axllent/mailpit" && $2 ~ /^v/ { print $2; exit }' go.mod)"
go_version="$(go env GOVERSION)"
cache_root="${JIT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/jit-operator}"
bin_dir="$cache_root/bin/mailpit-${mailpit_version}_${go_version}"

if [[ -x "$bin_dir/mailpit" ]]; then
	echo "$bin_dir/mailpit"
	exit 0
fi
mkdir -p "$bin_dir"
exec 9>"$cache_root/build-mailpit.lock"
flock 9
if [[ -x "$bin_dir/mailpit" ]]; then
	echo "$bin_dir/mailpit"
	exit 0
fi
staging="$(mktemp -d "$bin_dir/.build.XXXXXX")"
trap 'rm -rf "$staging"' EXIT

echo "building mailpit $mailpit_version into $bin_dir" >&2
export GOFLAGS="-mod=mod -trimpath"
export CGO_ENABLED=0
go build -ldflags "-s -w -X github.com/axllent/mailpit/config.Version=$mailpit_version" \
	-o "$staging/mailpit" github.com/axllent/mailpit
mv "$staging/mailpit" "$bin_dir/mailpit"
echo "$bin_dir/mailpit"
