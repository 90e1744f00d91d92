#!/usr/bin/env bash
# Installs the AWS emulator the tests use, moto's server from PyPI, into a virtualenv in the
# cache outside the clone, keyed by its version; prints the path of its moto_server command.
#
#   moto.sh
set -euo pipefail

version=5.2.5
venv="$("$(dirname "${BASH_SOURCE[0]}")/../python/venv.sh" moto "$version" "moto[server]==$version")"
echo "$venv/bin/moto_server"
