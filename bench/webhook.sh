#!/usr/bin/env bash
# Webhook latency: time from the 200 of a setPresence to the webhook's receipt, at a fixed request
# rate, against a loopback receiver; baseline = a direct POST to the same receiver in the same run.
# Usage: bench/webhook.sh [RATE=2000] [SECONDS=10] [ROUNDS=3]. Loopback only, bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:-2000}
SECONDS_PER_ROUND=${2:-10}
ROUNDS=${3:-3}

cargo build --release -p presenced -p presenced-bench --bins --locked >&2
mkdir -p bench/results
out="bench/results/webhook-$(date -u +%Y%m%dT%H%M%SZ).jsonl"
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS: $RATE changes/s for ${SECONDS_PER_ROUND}s" >&2
  target/release/bench-webhook --presenced target/release/presenced --rate "$RATE" --seconds "$SECONDS_PER_ROUND" \
    | sed "s/^{/{\"round\":$round,/" | tee -a "$out" >&2
done

python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(name, key):
    return statistics.median(r[key] for r in rows if r.get("name") == name)
runs = [r for r in rows if "achieved_rate" in r]
names = [
    "setPresence 200 -> webhook receipt",
    "setPresence sent -> webhook receipt",
    "setPresence sent -> 200 (durable write)",
    "baseline: direct POST round trip to the receiver",
]
print(f"rounds: {len(runs)}, achieved rate (median): {statistics.median(r['achieved_rate'] for r in runs):.0f}/s, "
      f"errors: {sum(r['errors'] for r in runs)}, notifications missing: {sum(r['notifications_missing'] for r in runs)}")
print("| measurement | p50 ms | p90 ms | p99 ms | max ms |")
print("|---|---|---|---|---|")
for n in names:
    print(f"| {n} | {med(n,'p50_ms'):.3f} | {med(n,'p90_ms'):.3f} | {med(n,'p99_ms'):.3f} | {med(n,'max_ms'):.3f} |")
base = med(names[3], "p99_ms")
print(f"\nratio p99 (200 -> receipt) / baseline p99: {med(names[0],'p99_ms')/base:.1f}")
print(f"raw results: {sys.argv[1]}")
PY
