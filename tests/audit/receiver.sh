#!/usr/bin/env bash
# Installs the official CloudEvents SDK for Python (PyPI `cloudevents`) into a virtualenv in the
# cache outside the clone, keyed by its version; prints the path of that virtualenv's python.
# The tests' CloudEvents receiver (tests/audit/receiver.py) parses every event with it, so the
# format is checked by someone else's code. Harmless to run again.
#
#   receiver.sh
set -euo pipefail

version=1.11.0
cache="${JIT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/jit-operator}"
venv="$cache/cloudevents-$version"
complete="$venv/.installed"

if [[ ! -f "$complete" ]]; then
	mkdir -p "$cache"
	exec 9>"$cache/cloudevents.lock"
	flock 9
	if [[ ! -f "$complete" ]]; then
		echo "installing cloudevents==$version into $venv" >&2
		rm -rf "$venv"
		python3 -m venv "$venv" >&2 || {
			echo "python3 -m venv failed; install the Debian package python3-venv" >&2
			exit 1
		}
		"$venv/bin/pip" install --quiet --disable-pip-version-check "cloudevents==$version" >&2
		touch "$complete"
	fi
fi
echo "$venv/bin/python"
