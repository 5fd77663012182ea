#!/usr/bin/env bash
# SyTest (matrix-org's homeserver suite) against this checkout's pocketserver, the way
# the README's conformance figures were measured. Not part of `bash tests/run`: a full
# run takes 7-30 minutes on two cores.
#
#   bash tests/conformance/sytest.sh                       # every test
#   bash tests/conformance/sytest.sh tests/31sync/*.pl     # some files (paths inside SyTest)
#
# Needs ../shared/conformance/sytest beside the checkout (SyTest itself, the pocketserver
# driver and run.sh) and Debian's Perl modules; run.sh prints the apt-get line for any
# that are missing. Results: $SYTEST_OUT (default /tmp/pocketserver-sytest/results/<time>),
# summary.txt there has the totals by area and the failing tests.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
conf="${POCKETSERVER_CONFORMANCE:-$repo/../shared/conformance}"
if [ ! -x "$conf/sytest/run.sh" ] && [ ! -f "$conf/sytest/run.sh" ]; then
  echo "no SyTest at $conf/sytest (set POCKETSERVER_CONFORMANCE)" >&2
  exit 2
fi
args=(--cmd "python3 -m pocketserver" --timeout "${SYTEST_TIMEOUT:-3600}")
[ -n "${SYTEST_OUT:-}" ] && args+=(--out "$SYTEST_OUT")
[ -n "${SYTEST_PORTS:-}" ] && args+=(--ports "$SYTEST_PORTS")
# This checkout's code, also in the servers SyTest starts.
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
if [ $# -gt 0 ]; then
  exec bash "$conf/sytest/run.sh" "${args[@]}" -- "$@"
fi
exec bash "$conf/sytest/run.sh" "${args[@]}"
