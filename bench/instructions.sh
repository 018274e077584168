#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind: user-space instructions only (the
# kernel's TCP and fsync work is not counted), but repeatable to a fraction of a percent whatever
# else the machine is doing, so a change to the request path can be compared on a shared, noisy
# machine where wall-clock throughput moves ±15% between runs (BENCHMARKS.md §1).
#
# Usage: bench/instructions.sh     (needs valgrind and curl: apt-get install -y valgrind curl)
#
# Each target runs under callgrind three times: with R rounds of 1,000 GETs and 1,000
# setPresence, with 6R rounds of GETs, and with 6R rounds of setPresence; the difference over
# the extra 5R × 1,000 requests is the cost of one request, start-up and shutdown cancelled out.
# Requests are sequential over one keep-alive connection (curl), 1,000 distinct users.
#
# Knobs: R [1]; SKIP_BUILD [0] (1 uses the existing target/release binaries); BIN_DIR [target/release]
#        (where presenced and bench-baseline are, e.g. a copy built at an older commit);
#        DATA_PARENT [$TMPDIR or /tmp] (the data directory; a real disk, as the store fsyncs).
set -euo pipefail

R=${R:-1}
SKIP_BUILD=${SKIP_BUILD:-0}
DATA_PARENT=${DATA_PARENT:-${TMPDIR:-/tmp}}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${BIN_DIR:-$ROOT/target/release}

die() { printf '[instructions] ERROR: %s\n' "$*" >&2; exit 1; }
for tool in valgrind curl; do
    command -v "$tool" >/dev/null || die "$tool is not installed; run: apt-get install -y $tool"
done
if [[ "$SKIP_BUILD" != 1 ]]; then
    (cd "$ROOT" && cargo build --release -p presenced -p presenced-bench --bins --quiet)
fi
[[ -x "$BIN/presenced" && -x "$BIN/bench-baseline" ]] || die "binaries missing in $BIN"

USERS=1000
SET_BODY='{"sessionId":"bench","availability":"Busy","activity":"InACall","expirationDuration":"PT1H"}'

# run TARGET GET_ROUNDS SET_ROUNDS -> total instructions of the server process
run() {
    local target=$1 gets=$2 sets=$3 work url="" token="" pid i r
    work=$(mktemp -d "${DATA_PARENT%/}/presenced-instr.XXXXXX")
    if [[ "$target" == presenced ]]; then
        valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" "$BIN/presenced" serve \
            --listen 127.0.0.1:0 --data-dir "$work/data" --log-level warn --rate-limit off \
            >"$work/out" 2>"$work/err" &
    else
        valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" "$BIN/bench-baseline" \
            --listen 127.0.0.1:0 >"$work/out" 2>"$work/err" &
    fi
    pid=$!
    for ((i = 0; i < 600; i++)); do
        url=$(sed -n 's/^listening on \(http:\/\/[^ ]*\)$/\1/p' "$work/out")
        [[ -z "$url" ]] || break
        kill -0 "$pid" 2>/dev/null || { cat "$work/err" >&2; die "$target exited during start-up"; }
        sleep 0.1
    done
    [[ -n "$url" ]] || die "$target did not start within 60 s under valgrind"
    if [[ "$target" == presenced ]]; then
        token=$("$BIN/presenced" token --data-dir "$work/data" --tenant bench --ttl 1h)
    else
        token=$(printf 'x%.0s' {1..300}) # the same header size; the baseline does not check it
    fi
    for ((r = 0; r < sets; r++)); do
        curl -sS -o /dev/null -X POST -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
            -d "$SET_BODY" "$url/v1.0/users/user-[1-$USERS]/presence/setPresence"
    done
    for ((r = 0; r < gets; r++)); do
        curl -sS -o /dev/null -H "Authorization: Bearer $token" "$url/v1.0/users/user-[1-$USERS]/presence"
    done
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    sed -n 's/^summary: //p' "$work/cg.out"
    rm -rf "$work"
}

per_request() { echo $(( ($2 - $1) / (5 * R * USERS) )); }

base=$(run presenced "$R" "$R")
gets=$(run presenced $((6 * R)) "$R")
sets=$(run presenced "$R" $((6 * R)))
b_base=$(run baseline "$R" "$R")
b_gets=$(run baseline $((6 * R)) "$R")
b_sets=$(run baseline "$R" $((6 * R)))

GIT_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
echo "Instructions per request (callgrind, user space), git $GIT_REV, $((5 * R * USERS)) requests per difference"
echo
echo "| request | baseline | presenced | presenced/baseline |"
echo "| --- | ---: | ---: | ---: |"
g=$(per_request "$base" "$gets"); bg=$(per_request "$b_base" "$b_gets")
s=$(per_request "$base" "$sets"); bs=$(per_request "$b_base" "$b_sets")
echo "| GET presence | $bg | $g | $(awk -v a="$g" -v b="$bg" 'BEGIN { printf "%.2f", a / b }') |"
echo "| setPresence (POST) | $bs | $s | $(awk -v a="$s" -v b="$bs" 'BEGIN { printf "%.2f", a / b }') |"
