#!/usr/bin/env bash
# Prints the first stanza of /etc/apt/sources.list.d/debian.sources with its Suites line set to
# $1 and, when given, its Types line set to $2: how the project derives every extra apt source,
# so the mirror and keyring the machine already trusts are reused.
# Usage: scripts/apt-stanza.sh SUITE [TYPES]
set -euo pipefail
SRC=/etc/apt/sources.list.d/debian.sources
[ -f "$SRC" ] || { echo "apt-stanza: $SRC not found; cannot derive an apt source" >&2; exit 1; }
awk -v suite="$1" -v types="${2:-}" 'BEGIN{RS=""; FS="\n"} NR==1 {
       for (i = 1; i <= NF; i++) {
         if ($i ~ /^Suites:/) print "Suites: " suite
         else if (types != "" && $i ~ /^Types:/) print "Types: " types
         else print $i
       }
       exit }' "$SRC"
