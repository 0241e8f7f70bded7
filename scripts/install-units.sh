#!/usr/bin/env bash
# Installs the sidecar pair as root: the package into its own venv (/opt/suricata-normalizer),
# the two commands into /usr/local/bin, the systemd units, a drop-in for Debian's own
# suricata.service (it also reads the tap, through the include, and orders itself after the
# normalizer without requiring it), the example config (never overwriting an existing one) and
# the lab rules, generates Suricata's include fragment from this host's
# /etc/suricata/suricata.yaml (`suricata-normalizer suricata-config`: the operator's af-packet and
# outputs lists plus the tap; rerun it after editing suricata.yaml), then checks the units with
# `systemd-analyze verify`. DESTDIR=/some/root installs the files only (packaging, tests; the
# fragment is host-specific and is not generated there).
#
#   scripts/install-units.sh && systemctl enable --now normalizer eve-enricher &&
#     systemctl restart suricata
#   # suricata.service then runs: suricata -D --af-packet -c /etc/suricata/suricata.yaml
#   #   --include /etc/suricata/normalizer.yaml --pidfile /run/suricata.pid
#   # (--af-packet without an interface: every af-packet entry, the stock ones and the tap)
#   # (an appliance behind a gateway load balancer instead: systemctl enable --now appliance
#   # eve-enricher; see docs/appliance.md)
set -euo pipefail
cd "$(dirname "$0")/.."
DESTDIR=${DESTDIR:-}
VENV=/opt/suricata-normalizer
UNITS=(normalizer.service eve-enricher.service appliance.service)
SURICATA_YAML=/etc/suricata/suricata.yaml

install -d "$DESTDIR/etc/systemd/system/suricata.service.d" "$DESTDIR/etc/suricata-normalizer" \
  "$DESTDIR/etc/suricata/rules" "$DESTDIR/usr/local/bin"
for u in "${UNITS[@]}"; do
  install -m 0644 "suricata/systemd/$u" "$DESTDIR/etc/systemd/system/$u"
done
for f in config.toml normalizer.env appliance.toml appliance.env; do  # local edits survive a re-install
  [ -e "$DESTDIR/etc/suricata-normalizer/$f" ] ||
    install -m 0644 "suricata/$f" "$DESTDIR/etc/suricata-normalizer/$f"
done
TAP=$(sed -n 's/.*--tap \([^ "]*\).*/\1/p' "$DESTDIR/etc/suricata-normalizer/normalizer.env")
TAP=${TAP:-snl0}
sed "s/snl0/$TAP/g" suricata/systemd/suricata.service.d/normalizer.conf \
  > "$DESTDIR/etc/systemd/system/suricata.service.d/normalizer.conf"
chmod 0644 "$DESTDIR/etc/systemd/system/suricata.service.d/normalizer.conf"
install -m 0644 suricata/rules/decoy.rules "$DESTDIR/etc/suricata/rules/decoy.rules"

if [ -n "$DESTDIR" ]; then
  echo "install-units: files installed under $DESTDIR (no venv, user or systemd changes)"
  exit 0
fi
[ -e "$SURICATA_YAML" ] || {
  echo "install-units: $SURICATA_YAML not found: install Suricata first (README, Live)" >&2
  exit 1
}

python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q .
ln -sf "$VENV/bin/suricata-normalizer" /usr/local/bin/suricata-normalizer
ln -sf "$VENV/bin/eve-enricher" /usr/local/bin/eve-enricher
/usr/local/bin/suricata-normalizer suricata-config --suricata-yaml "$SURICATA_YAML" \
  --tap "$TAP" -o /etc/suricata/normalizer.yaml
getent passwd suricata-normalizer >/dev/null ||
  useradd --system --home-dir /var/lib/suricata-normalizer --shell /usr/sbin/nologin \
    suricata-normalizer
systemd-analyze verify --man=no "${UNITS[@]/#//etc/systemd/system/}"
if [ -d /run/systemd/system ]; then  # booted with systemd (not in a plain container)
  systemctl daemon-reload
fi
echo "install-units: installed and verified; start with:" \
  "systemctl enable --now normalizer eve-enricher && systemctl restart suricata"
