#!/usr/bin/env bash
# Ensure a virtualenv with heisenbridge (an IRC bridge built on mautrix) for the
# application-service interop test (tests/interop/test_irc_bridge.py), and print its
# python. Kept apart from pocketserver's environment: mautrix and aiohttp bring their own pins.
set -euo pipefail
venv="${POCKETSERVER_HEISENBRIDGE_VENV:-$HOME/.cache/pocketserver/heisenbridge-venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import heisenbridge" 2>/dev/null; then
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check "heisenbridge==1.15.*" >&2
fi
echo "$venv/bin/python"
