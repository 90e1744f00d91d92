#!/usr/bin/env bash
# Installs one PyPI requirement into its own virtualenv in the cache outside the clone, keyed by
# NAME and VERSION, and prints the virtualenv's path. Harmless to run again: a complete install
# is reused, an interrupted one is redone. Used by tests/aws/moto.sh and tests/audit/receiver.sh.
#
#   venv.sh NAME VERSION REQUIREMENT
set -euo pipefail

name="$1" version="$2" requirement="$3"
cache="${JIT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/jit-operator}"
venv="$cache/$name-$version"
complete="$venv/.installed"

if [[ ! -f "$complete" ]]; then
	command -v python3 >/dev/null 2>&1 || {
		echo "python3 is missing: the tests run $name, a Python program" >&2
		exit 1
	}
	mkdir -p "$cache"
	exec 9>"$cache/$name.lock"
	flock 9
	if [[ ! -f "$complete" ]]; then
		echo "installing $requirement into $venv" >&2
		rm -rf "$venv"
		python3 -m venv "$venv" >&2 || {
			echo "python3 -m venv failed; install the Debian package python3-venv" >&2
			exit 1
		}
		"$venv/bin/pip" install --quiet --disable-pip-version-check "$requirement" >&2
		touch "$complete"
	fi
fi
echo "$venv"
