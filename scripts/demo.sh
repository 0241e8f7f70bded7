#!/usr/bin/env bash
# The pcap demo (./run demo-pcap; ./run demo is the live lab): a capture recorded between a real
# HAProxy and a real nginx decoy (PROXY v2 header with TLVs) is normalized, and real Suricata runs
# on the capture before and after, with checksum validation on. The two alert tables show what the
# tool fixes.
set -euo pipefail
cd "$(dirname "$0")/.."
PCAP=${1:-pcaps/haproxy-v2-tlv.pcap}
PROXY=${2:-192.0.2.1/32}
RULES=suricata/rules/decoy.rules
work=$(mktemp -d /tmp/snl-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT

run_suricata() {  # $1 = capture, $2 = log dir
  mkdir -p "$2"
  suricata -r "$1" -k all -S "$RULES" -l "$2" --runmode single >"$2/stdout" 2>&1 \
    || { echo "suricata failed on $1:"; tail -20 "$2/stdout"; exit 1; }
}

echo "== input: $PCAP (trusted proxy $PROXY)"
run_suricata "$PCAP" "$work/raw"
.venv/bin/suricata-normalizer rewrite "$PCAP" -o "$work/normalized.pcap" --proxy "$PROXY"
run_suricata "$work/normalized.pcap" "$work/norm"
.venv/bin/python - "$work/raw/eve.json" "$work/norm/eve.json" <<'PY'
import collections, json, sys

def load(path):
    alerts, msgs, failed, ends = collections.Counter(), {}, 0, collections.Counter()
    with open(path) as fh:
        for line in fh:
            ev = json.loads(line)
            if ev.get("event_type") == "alert":
                sid = ev["alert"]["signature_id"]
                alerts[sid] += 1
                msgs[sid] = ev["alert"]["signature"]
                ends[f'{ev["src_ip"]}:{ev["src_port"]} -> {ev["dest_ip"]}:{ev["dest_port"]}'] += 1
            if ev.get("event_type") == "flow" and "failed" in (
                ev.get("app_proto"), ev.get("app_proto_ts"), ev.get("app_proto_tc")
            ):
                failed += 1
    return alerts, msgs, failed, ends

(raw, m1, f1, e1), (norm, m2, f2, e2) = load(sys.argv[1]), load(sys.argv[2])
msgs = {**m1, **m2}
print(f"\n{'sid':>9}  {'before':>6}  {'after':>6}  signature")
for sid in sorted(set(raw) | set(norm)):
    print(f"{sid:>9}  {raw[sid]:>6}  {norm[sid]:>6}  {msgs[sid]}")
print(f"{'total':>9}  {sum(raw.values()):>6}  {sum(norm.values()):>6}")
print(f"flows with app-layer detection failed: before {f1}, after {f2}")
for label, ends in (("before", e1), ("after", e2)):
    print(f"alerts {label} name:")
    for pair, n in sorted(ends.items()):
        print(f"  {n:3d} x {pair}")
PY

