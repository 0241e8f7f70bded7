#!/usr/bin/env bash
# Installs the sidecar pair as root: the package into its own venv (/opt/suricata-normalizer),
# the two commands into /usr/local/bin, the systemd units, a drop-in for Debian's own
# suricata.service (it also reads the tap, through the include, and orders itself after the
# normalizer without requiring it), the example config (never overwriting an existing one),
# Suricata's include and the lab rules, then checks the units with `systemd-analyze verify`.
# DESTDIR=/some/root installs the files only (packaging, tests).
#
#   scripts/install-units.sh && systemctl enable --now normalizer eve-enricher &&
#     systemctl restart suricata
#
# The include (/etc/suricata/normalizer.yaml) is generated from the operator's suricata.yaml
# when this version has `suricata-normalizer suricata-config` (it keeps every output and
# af-packet interface and adds the tap); otherwise the static suricata/normalizer.yaml is used.
set -euo pipefail
cd "$(dirname "$0")/.."
DESTDIR=${DESTDIR:-}
VENV=/opt/suricata-normalizer
UNITS=(normalizer.service eve-enricher.service)
SURICATA_YAML=/etc/suricata/suricata.yaml
TAP=snl0

install -d "$DESTDIR/etc/systemd/system/suricata.service.d" "$DESTDIR/etc/suricata-normalizer" \
  "$DESTDIR/etc/suricata/rules" "$DESTDIR/usr/local/bin"
for u in "${UNITS[@]}"; do
  install -m 0644 "suricata/systemd/$u" "$DESTDIR/etc/systemd/system/$u"
done
install -m 0644 suricata/systemd/suricata.service.d/normalizer.conf \
  "$DESTDIR/etc/systemd/system/suricata.service.d/normalizer.conf"
for f in config.toml normalizer.env; do  # local edits survive a re-install
  [ -e "$DESTDIR/etc/suricata-normalizer/$f" ] ||
    install -m 0644 "suricata/$f" "$DESTDIR/etc/suricata-normalizer/$f"
done
install -m 0644 suricata/rules/decoy.rules "$DESTDIR/etc/suricata/rules/decoy.rules"

static_include() {
  install -m 0644 suricata/normalizer.yaml "$DESTDIR/etc/suricata/normalizer.yaml"
}

if [ -n "$DESTDIR" ]; then
  static_include
  echo "install-units: files installed under $DESTDIR (no venv, user or systemd changes)"
  exit 0
fi

python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q .
ln -sf "$VENV/bin/suricata-normalizer" /usr/local/bin/suricata-normalizer
ln -sf "$VENV/bin/eve-enricher" /usr/local/bin/eve-enricher
getent passwd suricata-normalizer >/dev/null ||
  useradd --system --home-dir /var/lib/suricata-normalizer --shell /usr/sbin/nologin \
    suricata-normalizer

if [ ! -e "$SURICATA_YAML" ]; then
  echo "install-units: $SURICATA_YAML not found (install Suricata first); static include used" >&2
  static_include
elif /usr/local/bin/suricata-normalizer suricata-config --help >/dev/null 2>&1; then
  /usr/local/bin/suricata-normalizer suricata-config --suricata-yaml "$SURICATA_YAML" \
    --tap "$TAP" -o /etc/suricata/normalizer.yaml
  echo "install-units: /etc/suricata/normalizer.yaml generated from $SURICATA_YAML"
else
  static_include
fi

systemd-analyze verify --man=no "${UNITS[@]/#//etc/systemd/system/}"
if [ -d /run/systemd/system ]; then  # booted with systemd (not in a plain container)
  systemctl daemon-reload
fi
echo "install-units: installed and verified; start with:" \
  "systemctl enable --now normalizer eve-enricher && systemctl restart suricata"
