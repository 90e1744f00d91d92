#!/usr/bin/env bash
# Installs the AWS emulator the tests use, moto's server from PyPI, into a virtualenv in the
# cache outside the clone, keyed by its version; prints the path of its moto_server command.
# Harmless to run again: a complete install is reused, an interrupted one is redone.
#
#   moto.sh
set -euo pipefail

version=5.2.5
cache="${JIT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/jit-operator}"
venv="$cache/moto-$version"
complete="$venv/.installed"

if [[ ! -f "$complete" ]]; then
	command -v python3 >/dev/null 2>&1 || {
		echo "python3 is missing: the AWS tests run moto, a Python program" >&2
		exit 1
	}
	mkdir -p "$cache"
	exec 9>"$cache/moto.lock"
	flock 9
	if [[ ! -f "$complete" ]]; then
		echo "installing moto[server]==$version into $venv" >&2
		rm -rf "$venv"
		python3 -m venv "$venv" >&2 || {
			echo "python3 -m venv failed; install the Debian package python3-venv" >&2
			exit 1
		}
		"$venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$version" >&2
		touch "$complete"
	fi
fi
echo "$venv/bin/moto_server"
