#!/usr/bin/env bash
# SyTest (matrix-org's homeserver suite) against this checkout's pocketserver, the way
# the README's conformance figures were measured. Not part of `bash tests/run`: a full
# run takes 7-30 minutes on two cores.
#
#   bash tests/conformance/sytest.sh                       # every test
#   bash tests/conformance/sytest.sh tests/31sync/*.pl     # some files (paths inside SyTest)
#
# Needs ../shared/conformance/sytest beside the checkout (SyTest itself, run.sh and the
# stand-in Perl modules) and Debian's Perl modules; run.sh prints the apt-get line for any
# that are missing. The driver is this checkout's tests/conformance/Pocketserver.pm (the
# shared one, extended as pocketserver's config grows: application services, SMTP,
# identity servers): the shared folder is read-only, so the run goes through an overlay
# folder that holds the shared files and this driver.
#
# Env: SYTEST_OUT (results; default /tmp/pocketserver-sytest/results/<time>), SYTEST_PORTS
# (A:B), SYTEST_TIMEOUT (s), SYTEST_WORK (where SyTest is unpacked; default one folder per
# checkout, so parallel runs from different checkouts never share a driver).
# summary.txt in the results has the totals by area and the failing tests.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
conf="${POCKETSERVER_CONFORMANCE:-$repo/../shared/conformance}"
if [ ! -f "$conf/sytest/run.sh" ]; then
  echo "no SyTest at $conf/sytest (set POCKETSERVER_CONFORMANCE)" >&2
  exit 2
fi
key="$(printf '%s' "$repo" | md5sum | cut -c1-12)"
export SYTEST_WORK="${SYTEST_WORK:-/tmp/pocketserver-sytest-$key}"
overlay="$SYTEST_WORK/driver"
mkdir -p "$overlay"
for f in "$conf/sytest/"*; do
  name="$(basename "$f")"
  case "$name" in Pocketserver.pm|run.sh) continue ;; esac
  ln -sfn "$f" "$overlay/$name"
done
cp "$repo/tests/conformance/Pocketserver.pm" "$overlay/Pocketserver.pm"
rm -f "$overlay/run.sh" && cp "$conf/sytest/run.sh" "$overlay/run.sh"
args=(--cmd "python3 -m pocketserver" --timeout "${SYTEST_TIMEOUT:-3600}")
[ -n "${SYTEST_OUT:-}" ] && args+=(--out "$SYTEST_OUT")
[ -n "${SYTEST_PORTS:-}" ] && args+=(--ports "$SYTEST_PORTS")
# This checkout's code, also in the servers SyTest starts.
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
if [ $# -gt 0 ]; then
  exec bash "$overlay/run.sh" "${args[@]}" -- "$@"
fi
exec bash "$overlay/run.sh" "${args[@]}"
