#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian bookworm machine, as root:
# Suricata 7 from bookworm-backports (its apt source is derived from the first stanza of
# /etc/apt/sources.list.d/debian.sources with only the Suites line changed, so the mirror the
# machine already trusts is reused), the lab's real components, and a .venv with the package.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

BPO=/etc/apt/sources.list.d/bookworm-backports.sources
# gcc + python3-dev: the compiled engine (normalizer/core/_fastpath.c), built by pip install.
APT_PKGS=(suricata tcpdump haproxy nginx-light libnginx-mod-stream curl iproute2 nftables tcpreplay procps kmod ethtool openssl
  gcc python3-dev
  debootstrap systemd-container)  # the last two: the real-systemd test (tests/lab/systemd_lab.py)

need_apt=0
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_apt=1
done
if [ "$need_apt" = 1 ] || ! suricata -V 2>/dev/null | grep -q "version 7"; then
  if [ ! -f "$BPO" ]; then
    # First stanza only (up to the first blank line), Suites replaced.
    scripts/apt-stanza.sh bookworm-backports > "$BPO.tmp"
    mv "$BPO.tmp" "$BPO"
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends -t bookworm-backports suricata
  apt-get install -y -q --no-install-recommends "${APT_PKGS[@]}"
  # The packaged services must not run on their own: the lab starts its own instances.
  for s in suricata haproxy nginx; do
    systemctl disable --now "$s" >/dev/null 2>&1 || service "$s" stop >/dev/null 2>&1 || true
  done
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
scripts/fetch-eve-schema.sh || echo "setup: Suricata's eve schema not fetched; the schema tests will skip" >&2
echo "setup: done ($(suricata -V 2>&1 | head -1))"
