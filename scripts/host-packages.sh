#!/usr/bin/env bash
# Installs the Debian packages qnat's lab, end-to-end tests and benchmarks use, when they are
# missing. Runs before `npm test` and `npm start` (npm's pre-scripts). Without root it only
# reports what is missing: the namespace tests then skip and say so.
set -euo pipefail

# command -> Debian package
declare -A wanted=(
  [ip]=iproute2
  [iptables]=iptables
  [conntrack]=conntrack
  [iperf3]=iperf3
  [curl]=curl
  [ping]=iputils-ping
  [arping]=iputils-arping  # tap ports: ARP answered with the port's MAC (test/e2e/ethernet.test.ts, the kernel twin, conformance TAP mode)
  [tcpdump]=tcpdump        # tap ports: the gratuitous ARP at start (test/e2e/ethernet.test.ts)
  [traceroute]=traceroute
  [sysctl]=procps
  [python3]=python3  # the conformance harness's probe (test/conformance/probe.py)
  [hping3]=hping3    # the flood tests (test/e2e/floods.test.ts): SYN floods with spoofed sources, fragments
  [systemd-analyze]=systemd  # verifies contrib/qnat@.service (test/control/systemd-unit.test.ts)
  [tmux]=tmux        # qnat top on a real terminal (test/e2e/metrics-top.test.ts)
  [tcpdump]=tcpdump  # reads qnat capture's pcapng (test/e2e/capture.test.ts)
  [tshark]=tshark    # reads the captured packets' comments (frame.comment)
)

missing=()
for cmd in "${!wanted[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("${wanted[$cmd]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "qnat: not root, so these host packages were not installed: ${missing[*]} (namespace tests will skip)" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "qnat: apt-get not found; install these packages yourself: ${missing[*]}" >&2
  exit 0
fi
echo "qnat: installing host packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
# iperf3 asks whether to start a daemon; the answer is no.
echo "iperf3 iperf3/start_daemon boolean false" | debconf-set-selections 2>/dev/null || true
# tshark (wireshark-common) asks whether non-root users may capture; the answer is no.
echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections 2>/dev/null || true
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
