#!/usr/bin/env bash
# Fetches Suricata's own EVE JSON schema (etc/schema.json) for the enricher's schema tests.
# Why this way: Suricata 7.0.10's source tarball does not ship etc/schema.json (8.0 is the first
# release that does), and the machine reaches only package registries. So the upstream tarball
# of the newest Suricata source package Debian has (unstable) is downloaded with apt-get source,
# through a private apt state (no system source list changes), from a deb-src stanza derived from
# the first stanza of debian.sources with only Types and Suites changed. Best effort: on failure
# the schema tests skip and say why.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=.cache/suricata-eve-schema.json
[ -s "$OUT" ] && exit 0
work=$(mktemp -d /tmp/eve-schema.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" .cache
scripts/apt-stanza.sh sid deb-src > "$work/src.sources"
APT=(-o "Dir::Etc::SourceList=$work/src.sources" -o Dir::Etc::SourceParts=/dev/null
     -o "Dir::State::Lists=$work/lists" -o "Dir::Cache::archives=$work" -o APT::Sandbox::User=root)
apt-get "${APT[@]}" update -q >/dev/null
# Only the upstream tarball is needed; the Debian parts may be missing on a snapshot mirror.
(cd "$work" && apt-get "${APT[@]}" source --download-only -q suricata >/dev/null 2>&1) || true
tarball=$(ls "$work"/suricata_*.orig.tar.* 2>/dev/null | grep -v '\.asc$' | head -1)
[ -n "$tarball" ] || { echo "fetch-eve-schema: no Suricata source tarball" >&2; exit 1; }
tar -xaf "$tarball" -C "$work" --wildcards '*/etc/schema.json'
cp "$work"/suricata-*/etc/schema.json "$OUT"
echo "fetch-eve-schema: $(basename "$tarball") -> $OUT"
