#!/usr/bin/env bash
# Packs the kubectl jit plugin for krew: BINARY into OUT/kubectl-jit_vVERSION_OS_ARCH.tar.gz
# with kubectl_complete-jit, and OUT/jit.yaml, the manifest for that archive (its sha256
# computed here). URI defaults to the archive's path, for
#   kubectl krew install --manifest=OUT/jit.yaml --archive=OUT/kubectl-jit_....tar.gz
set -euo pipefail

binary="${1:?usage: package.sh BINARY OUT [URI]}"
out="${2:?usage: package.sh BINARY OUT [URI]}"
here="$(cd "$(dirname "$0")" && pwd)"
version="$(awk -F'"' '/^version = / { print $2; exit }' "$here/../Cargo.toml")"
os="$(uname -s | tr '[:upper:]' '[:lower:]')"
case "$(uname -m)" in
  x86_64 | amd64) arch=amd64 ;;
  aarch64 | arm64) arch=arm64 ;;
  *) arch="$(uname -m)" ;;
esac

mkdir -p "$out"
out="$(cd "$out" && pwd)"
archive="$out/kubectl-jit_v${version}_${os}_${arch}.tar.gz"
staging="$(mktemp -d)"
trap 'rm -rf "$staging"' EXIT
cp "$binary" "$staging/kubectl-jit"
cp "$here/kubectl_complete-jit" "$staging/kubectl_complete-jit"
chmod 0755 "$staging/kubectl-jit" "$staging/kubectl_complete-jit"
# Reproducible: fixed owner, order and times, so the same binary gives the same sha256.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime='1970-01-01' \
  -C "$staging" -cf - kubectl-jit kubectl_complete-jit | gzip -n >"$archive"
sha256="$(sha256sum "$archive" | cut -d' ' -f1)"
uri="${3:-file://$archive}"

VERSION="$version" OS="$os" ARCH="$arch" URI="$uri" SHA256="$sha256" \
  awk '!/^#/ {
    for (name in ENVIRON) gsub("\\$\\{" name "\\}", ENVIRON[name])
    print
  }' "$here/jit.yaml" >"$out/jit.yaml"
echo "$archive"
