#!/usr/bin/env bash
# Ensure a virtualenv with a real Synapse for benchmarks and interop tests, and print
# its python. Kept apart from pocketserver's own environment (different pins).
set -euo pipefail
venv="${POCKETSERVER_SYNAPSE_VENV:-$HOME/.cache/pocketserver/synapse-venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import synapse" 2>/dev/null; then
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check "matrix-synapse==1.163.*" >&2
fi
echo "$venv/bin/python"
