#!/usr/bin/env bash
# Installs the official CloudEvents SDK for Python (PyPI `cloudevents`) into a virtualenv in the
# cache outside the clone, keyed by its version; prints the path of that virtualenv's python.
# The tests' CloudEvents receiver (tests/audit/receiver.py) parses every event with it, so the
# format is checked by someone else's code.
#
#   receiver.sh
set -euo pipefail

version=1.11.0
venv="$("$(dirname "${BASH_SOURCE[0]}")/../python/venv.sh" cloudevents "$version" "cloudevents==$version")"
echo "$venv/bin/python"
