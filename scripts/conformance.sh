#!/usr/bin/env bash
# `npm run conformance -- [--tap] [--workers N] [CONFIG]` (default examples/seed.yaml): builds the kernel twin of CONFIG
# and qnat's lab of it side by side (namespaces renamed X-<tag>, nothing shared, nothing linked to
# this host's namespace), runs every conformance scenario through both and prints a readable
# report: each scenario AGREE or DIFFER, and every difference with both sides side by side.
# Needs root (network namespaces); run `npm run build` first (npm test's pretest does).
# Set QNAT_CONFORMANCE_VERBOSE=1 to print every section, equal ones too.
# `npm run conformance -- random` runs the property instead: random Neutron-style routers from
# CONFORMANCE_SEED (a fresh one when unset; the report names it, and giving it again replays).
# --tap: both routers run the config's Ethernet version (TAP ports on Linux bridges, the twin's
# veths on the same bridges), with ARP, host unreachable and traceroute's !H compared too.
# --workers N: qnat runs with `workers: N` added to the config (N threads, one queue of every leg
# each, one shared connection table); with --tap too (a neighbour table per thread, ARP relayed).
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: npm run conformance -- [--tap] [--workers N] [CONFIG|random]"
given="$*"
while [ $# -gt 0 ]; do
  case "$1" in
    --tap) export QNAT_CONFORMANCE_MODE=tap; shift ;;
    --workers)
      if ! [[ "${2:-}" =~ ^[1-9][0-9]*$ ]]; then echo "qnat conformance: --workers takes a whole number of threads, not '${2:-}' ($usage)" >&2; exit 2; fi
      export QNAT_CONFORMANCE_WORKERS="$2"; shift 2 ;;
    --workers=*)
      if ! [[ "${1#--workers=}" =~ ^[1-9][0-9]*$ ]]; then echo "qnat conformance: --workers takes a whole number of threads, not '${1#--workers=}' ($usage)" >&2; exit 2; fi
      export QNAT_CONFORMANCE_WORKERS="${1#--workers=}"; shift ;;
    -*) echo "qnat conformance: unknown option $1 ($usage)" >&2; exit 2 ;;
    *) break ;;
  esac
done
config="${1:-examples/seed.yaml}"
if [ "$config" = random ]; then
  export QNAT_CONFORMANCE_RANDOM=1
  config="random routers"
elif [ ! -f "$config" ]; then
  echo "qnat conformance: no such config: $config" >&2; exit 2
else
  export QNAT_CONFORMANCE_CONFIG="$config"
fi
if [ "$(id -u)" -ne 0 ]; then echo "qnat conformance: needs root (it builds network namespaces): sudo npm run conformance -- $given" >&2; exit 1; fi
command -v python3 >/dev/null || { echo "qnat conformance: python3 is missing (scripts/host-packages.sh installs it)" >&2; exit 1; }
[ -f dist/src/cli/main.js ] || npm run build >/dev/null
report="$(mktemp /tmp/qnat-conformance.XXXXXX)"
trap 'rm -f "$report"' EXIT
status=0
QNAT_CONFORMANCE_REPORT="$report" \
  npx vitest run test/conformance/conformance.test.ts --reporter=dot >/dev/null 2>&1 || status=$?
if grep -q '^REFUSED ' "$report"; then
  # A config that leaves no room for the scenarios' addresses or ports: one line, exit 2.
  sed -n 's/^REFUSED //p' "$report" >&2
  exit 2
fi
echo
cat "$report"
flaky="$(grep -c '^FLAKY ' "$report" || true)"
if [ "$flaky" -gt 0 ]; then
  echo "qnat conformance: $flaky scenario(s) agreed only on a retry (FLAKY above): a retry hides a timing dependence to fix" >&2
fi
on="$config${QNAT_CONFORMANCE_WORKERS:+ (qnat with workers: $QNAT_CONFORMANCE_WORKERS)}"
if [ "$status" -eq 0 ]; then
  echo "qnat conformance: the kernel and qnat agree on $on (scenarios marked 'known qnat bug' are reported bugs; documented differences are in docs/differences.md)"
else
  echo "qnat conformance: the kernel and qnat DIFFER on $on (see above)" >&2
fi
exit "$status"
