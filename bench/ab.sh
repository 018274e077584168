#!/usr/bin/env bash
# Interleaved A/B runs of the setPresence (or GET) scenario of bench/http.sh, for comparing two
# builds fairly on a shared machine: ABBA order, a fresh server and data dir per run.
#
# Usage: bench/ab.sh BIN_A BIN_B            (each a presenced binary; needs wrk and curl)
#
# Knobs (environment variables, defaults in brackets):
#   PAIRS [4]        ABBA pairs (each pair is 4 runs: A B B A)
#   CONNS [64]       wrk connections
#   THREADS [2]      wrk threads
#   WARMUP [3]       seconds of unmeasured load per run
#   DURATION [10]    measured seconds per run
#   USERS [10000]    users pre-populated and written, as in bench/http.sh
#   SCRIPT [set.lua] the wrk script: set.lua (setPresence) or get.lua (GET presence)
#   DATA_PARENT [$TMPDIR or /tmp]  where each run's data dir is made (must be a real disk)
#
# Output: one line per run (label, req/s, p50 and p99 in µs, load average before) on stdout, then
# the medians and the B/A ratio; the runs also go to bench/results/ab-<UTC date>.tsv.
set -euo pipefail

[[ $# == 2 ]] || { echo "usage: $0 BIN_A BIN_B" >&2; exit 2; }
BIN_A=$1 BIN_B=$2
PAIRS=${PAIRS:-4}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
WARMUP=${WARMUP:-3}
DURATION=${DURATION:-10}
USERS=${USERS:-10000}
SCRIPT=${SCRIPT:-set.lua}
DATA_PARENT=${DATA_PARENT:-${TMPDIR:-/tmp}}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR="$ROOT/bench"
export BENCH_DIR BENCH_USERS="$USERS" BENCH_USER_PREFIX="user-"
mkdir -p "$BENCH_DIR/results"
OUT="$BENCH_DIR/results/ab-$(date -u +%Y%m%dT%H%M%SZ).tsv"

WORK=$(mktemp -d "${DATA_PARENT%/}/presenced-ab.XXXXXX")
PID=
cleanup() {
    [[ -z "$PID" ]] || { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

field() { sed -n "s/.*\"$2\":\([-0-9.e+]*\).*/\1/p" <<<"$1"; }
median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# run LABEL BIN: one fresh server, pre-populated, warmed up, measured; prints "rps p50 p99".
run() {
    local label=$1 bin=$2 data="$WORK/data-$1-$RANDOM" url= i out j
    mkdir -p "$data"
    : >"$WORK/out"
    "$bin" serve --listen 127.0.0.1:0 --data-dir "$data" --log-level warn --rate-limit off \
        >"$WORK/out" 2>"$WORK/err" &
    PID=$!
    for ((i = 0; i < 100; i++)); do
        url=$(sed -n 's/^listening on \(http:\/\/[^ ]*\)$/\1/p' "$WORK/out")
        [[ -z "$url" ]] || break
        sleep 0.1
    done
    [[ -n "$url" ]] || { cat "$WORK/err" >&2; echo "server did not start" >&2; exit 1; }
    BENCH_TOKEN=$("$bin" token --data-dir "$data" --tenant bench --ttl 4h)
    export BENCH_TOKEN
    curl -sS --no-progress-meter -Z --parallel-max 64 -X POST -o /dev/null \
        -H "Authorization: Bearer $BENCH_TOKEN" -H 'Content-Type: application/json' \
        -d '{"sessionId":"bench","availability":"Busy","activity":"InACall","expirationDuration":"PT1H"}' \
        "$url/v1.0/users/user-[1-$USERS]/presence/setPresence"
    wrk -t"$THREADS" -c"$CONNS" -d"${WARMUP}s" -s "$BENCH_DIR/$SCRIPT" "$url" >/dev/null
    out=$(wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency -s "$BENCH_DIR/$SCRIPT" "$url")
    j=$(sed -n 's/^BENCH_RESULT //p' <<<"$out" | tail -n 1)
    [[ "$(field "$j" err_status)" == 0 ]] || { echo "$label: error responses: $j" >&2; exit 1; }
    kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
    rm -rf "$data"
    echo "$(field "$j" rps) $(field "$j" p50_us) $(field "$j" p99_us)"
}

RA=() RB=() PA=() PB=()
printf 'run\tbuild\treq_s\tp50_us\tp99_us\tloadavg_before\n' | tee "$OUT"
n=0
for ((p = 1; p <= PAIRS; p++)); do
    for label in A B B A; do
        bin=$BIN_A; [[ $label == B ]] && bin=$BIN_B
        load=$(cut -d' ' -f1 /proc/loadavg)
        run "$label" "$bin" >"$WORK/result"
        read -r rps p50 p99 <"$WORK/result"
        n=$((n + 1))
        printf '%s\t%s\t%.0f\t%s\t%s\t%s\n' "$n" "$label" "$rps" "$p50" "$p99" "$load" | tee -a "$OUT"
        if [[ $label == A ]]; then RA+=("$rps"); PA+=("$p99"); else RB+=("$rps"); PB+=("$p99"); fi
    done
done
ma=$(median "${RA[@]}") mb=$(median "${RB[@]}")
echo "median A: $(printf '%.0f' "$ma") req/s, p99 $(median "${PA[@]}") us"
echo "median B: $(printf '%.0f' "$mb") req/s, p99 $(median "${PB[@]}") us"
echo "B/A req/s: $(awk -v a="$ma" -v b="$mb" 'BEGIN { printf "%.3f", b / a }')"
echo "runs in ${OUT#"$ROOT"/}"
