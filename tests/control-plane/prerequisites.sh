#!/usr/bin/env bash
# Makes sure the commands the control-plane scripts and tests use are present, installing the
# Debian packages that provide any that are missing (when run as root with apt-get).
set -euo pipefail

declare -A package_of=(
	[openssl]=openssl [curl]=curl [python3]=python3 [setpriv]=util-linux [flock]=util-linux
	[setsid]=util-linux [pgrep]=procps [pkill]=procps [base64]=coreutils
)
# Go comes with the machine: Debian's is too old to build Kubernetes 1.36.
command -v go >/dev/null 2>&1 || {
	echo "go is missing: the control plane needs Go 1.25 or newer" >&2
	exit 1
}
missing=()
for command in "${!package_of[@]}"; do
	command -v "$command" >/dev/null 2>&1 || missing+=("${package_of[$command]}")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

mapfile -t packages < <(printf '%s\n' "${missing[@]}" | sort -u)
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
	echo "installing ${packages[*]}" >&2
	apt-get update -qq >/dev/null
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
else
	echo "missing commands; install the Debian packages: ${packages[*]}" >&2
	exit 1
fi
