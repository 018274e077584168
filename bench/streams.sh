#!/usr/bin/env bash
# Watch streams and client sessions against a release presenced on loopback (each measurement
# starts its own server on a free port with a temporary data directory, and stops it):
#   latency   change-to-stream latency, STREAMS SSE streams × WATCH users each over USERS users,
#             setPresence at RATE/s for MEASURE_SECONDS after WARMUP (issue 16's target: p99 < 10 ms),
#             LATENCY_ROUNDS times, each on a fresh server and each followed by the same writes
#             with no stream open (the write path alone)
#   memory    server RSS per idle stream at STEPS streams (and per idle HTTP connection)
#   writes    setPresence with no stream vs STREAMS streams open, ROUNDS interleaved rounds
#   sessions  server RSS per client session (WebSocket /me/presence/$session) at STEPS sessions
#
# Usage: bench/streams.sh [MODE…]      (default: latency memory writes sessions)
#
# Knobs (environment variables, defaults in brackets): STREAMS [1000], WATCH [3], USERS [1000],
# RATE [5000], WARMUP [25], MEASURE_SECONDS [20], LATENCY_ROUNDS [3], ROUNDS [6], WRITE_SECONDS [5],
# STEPS [1000,5000], SKIP_BUILD [0] (1 reuses target/release).
#
# Output: markdown tables on stdout; the JSON lines also go to bench/results/streams-<UTC date>.jsonl.
# The load generator and the server share the machine's CPUs: the results give both CPU times.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

STREAMS=${STREAMS:-1000}
WATCH=${WATCH:-3}
USERS=${USERS:-1000}
RATE=${RATE:-5000}
WARMUP=${WARMUP:-25}
MEASURE_SECONDS=${MEASURE_SECONDS:-20}
LATENCY_ROUNDS=${LATENCY_ROUNDS:-3}
ROUNDS=${ROUNDS:-6}
WRITE_SECONDS=${WRITE_SECONDS:-5}
STEPS=${STEPS:-1000,5000}
SKIP_BUILD=${SKIP_BUILD:-0}
MODES=("$@")
[[ ${#MODES[@]} -gt 0 ]] || MODES=(latency memory writes sessions)

log() { printf '[bench] %s\n' "$*" >&2; }

# Every stream and session is a descriptor in this process and in the server.
top=$(tr ',' '\n' <<<"$STEPS" | sort -n | tail -n 1)
need=$(( (top > STREAMS ? top : STREAMS) + 1000 ))
if (( $(ulimit -n) < need )); then
    ulimit -n "$need" 2>/dev/null || { log "ulimit -n is $(ulimit -n); $need descriptors are needed"; exit 1; }
fi
load=$(cut -d' ' -f1-3 /proc/loadavg)
if awk -v l="${load%% *}" -v n="$(nproc)" 'BEGIN { exit !(l > n / 4) }'; then
    log "WARNING: load average is $load on $(nproc) CPUs: other work will distort the numbers"
fi
if [[ "$SKIP_BUILD" != 1 ]]; then
    log "building (cargo build --release -p presenced -p presenced-bench --bins)"
    cargo build --release -p presenced -p presenced-bench --bins --locked --quiet
fi

mkdir -p bench/results
out="bench/results/streams-$(date -u +%Y%m%dT%H%M%SZ).jsonl"
log "$(nproc) CPUs ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)), load $load, commit $(git rev-parse --short HEAD)"
bin=target/release/bench-streams
runs=()
for mode in "${MODES[@]}"; do
    if [[ "$mode" == latency ]]; then
        for _ in $(seq 1 "$LATENCY_ROUNDS"); do runs+=(latency baseline); done
    else
        runs+=("$mode")
    fi
done
round=0
for mode in "${runs[@]}"; do
    [[ "$mode" == latency ]] && round=$((round + 1))
    case "$mode" in
        latency) args=(latency --streams "$STREAMS" --watch "$WATCH" --users "$USERS" --rate "$RATE"
                       --warmup "$WARMUP" --seconds "$MEASURE_SECONDS") ;;
        baseline) args=(latency --streams 0 --watch "$WATCH" --users "$USERS" --rate "$RATE"
                        --warmup "$WARMUP" --seconds "$MEASURE_SECONDS") ;;
        memory) args=(memory --steps "$STEPS" --watch "$WATCH" --users "$USERS") ;;
        writes) args=(writes --streams "$STREAMS" --watch "$WATCH" --users "$USERS" --rate "$RATE"
                      --rounds "$ROUNDS" --seconds "$WRITE_SECONDS") ;;
        sessions) args=(sessions --steps "$STEPS") ;;
        *) log "unknown mode $mode"; exit 2 ;;
    esac
    log "$bin ${args[*]}"
    if ! result=$("$bin" "${args[@]}" --presenced target/release/presenced); then
        log "$mode failed (see above)"
        [[ "$mode" == sessions ]] && continue
        exit 1
    fi
    printf '%s\n\n' "$result"
    tag="\"mode\":\"$mode\","
    [[ "$mode" == latency || "$mode" == baseline ]] && tag="$tag\"latency_round\":$round,"
    grep '^{' <<<"$result" | sed "s/^{/{$tag/" >>"$out"
done
if grep -q '"latency_round"' "$out"; then
    python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"latency_round"' in l]
print("Latency rounds (ms; each a fresh server):\n")
print("| round | streams | write rate/s | events/s | sent → event p50 / p90 / p99 / max | sent → 200 p50 / p99 / max | 200 → event p50 / p99 | load avg |")
print("| ---: | ---: | ---: | ---: | --- | --- | --- | --- |")
for n in sorted({r["latency_round"] for r in rows}):
    for mode in ("latency", "baseline"):
        mine = [r for r in rows if r["latency_round"] == n and r["mode"] == mode]
        if not mine:
            continue
        run = next(r for r in mine if "achieved_write_rate" in r)
        by = {r.get("series"): r.get("latency") for r in mine}
        e, w, a = by["write sent -> stream event arrived"], by["write sent -> 200 (durable)"], by["write's 200 -> stream event arrived"]
        ev = f"{e['p50_ms']} / {e['p90_ms']} / {e['p99_ms']} / {e['max_ms']}" if e["count"] else "–"
        ac = f"{a['p50_ms']} / {a['p99_ms']}" if a["count"] else "–"
        print(f"| {n} | {run['streams']} | {run['achieved_write_rate']:.0f} | {run['event_rate']:.0f} | {ev} "
              f"| {w['p50_ms']} / {w['p99_ms']} / {w['max_ms']} | {ac} | {run['machine']['loadavg']} |")
PY
fi
log "raw results in $out"
