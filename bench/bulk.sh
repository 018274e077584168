#!/usr/bin/env bash
# getPresencesByUserId latency: N sequential POSTs with 650 ids (Graph's maximum) against
# presenced, interleaved with N GET /healthz as the baseline (same server, connection and client),
# plus the server's own latency histogram scraped from /metrics before and after.
# Target (from the issue): p99 under 2 ms for the 650-id read.
#
# Usage: bench/bulk.sh                 (from anywhere; loopback only, bounded: ~10 s per run)
#
# Knobs (environment variables, defaults in brackets):
#   REQUESTS [2000]      measured requests per series
#   WARMUP [200]         unmeasured requests per series first
#   IDS [650]            ids per request (1..650)
#   MESSAGE_EVERY [3]    every n-th user also has a status message; 0 = none
#   VARIANTS [0]         1 also runs the diagnostic variants: 65 ids, and 650 ids without status messages
#   SKIP_BUILD [0]       1 uses the existing target/release binaries
#
# Output: JSON lines and a markdown table per run on stdout; the JSON lines also go to
# bench/results/bulk-<UTC date>.jsonl.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

REQUESTS=${REQUESTS:-2000}
WARMUP=${WARMUP:-200}
IDS=${IDS:-650}
MESSAGE_EVERY=${MESSAGE_EVERY:-3}
VARIANTS=${VARIANTS:-0}
SKIP_BUILD=${SKIP_BUILD:-0}

log() { printf '[bench] %s\n' "$*" >&2; }

load=$(cut -d' ' -f1-3 /proc/loadavg)
if awk -v l="${load%% *}" -v n="$(nproc)" 'BEGIN { exit !(l > n / 4) }'; then
    log "WARNING: load average is $load on $(nproc) CPUs: other work will distort the numbers"
fi
if [[ "$SKIP_BUILD" != 1 ]]; then
    log "building (cargo build --release -p presenced -p presenced-bench --bins)"
    cargo build --release -p presenced -p presenced-bench --bins --quiet
fi

mkdir -p bench/results
out="bench/results/bulk-$(date -u +%Y%m%dT%H%M%SZ).jsonl"
runs=("--ids $IDS --message-every $MESSAGE_EVERY")
if [[ "$VARIANTS" == 1 ]]; then
    runs+=("--ids 65 --message-every $MESSAGE_EVERY" "--ids $IDS --message-every 0")
fi
log "$(nproc) CPUs ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)), load $load"
for run in "${runs[@]}"; do
    log "bench-bulk $run --requests $REQUESTS --warmup $WARMUP"
    # shellcheck disable=SC2086
    result=$(target/release/bench-bulk --presenced target/release/presenced --requests "$REQUESTS" \
        --warmup "$WARMUP" $run)
    printf '%s\n\n' "$result"
    grep '^{' <<<"$result" | sed "s/^{/{\"args\":\"$run\",/" >>"$out"
done
log "raw results in $out"
