#!/usr/bin/env bash
# HTTP load benchmark: presenced against a minimal axum baseline (bench-baseline), same run,
# same machine, same wrk scripts. See BENCHMARKS.md for what it measures and the last results.
#
# Usage: bench/http.sh            (from anywhere; needs wrk and curl: apt-get install -y wrk curl)
#
# Knobs (environment variables, defaults in brackets):
#   ROUNDS [3]            measured rounds per scenario and target; the median is reported
#   DURATION [10]         seconds per measured wrk run
#   WARMUP [2]            seconds of unmeasured load per scenario and target before the rounds
#   THREADS [2]           wrk threads. The client shares the machine with the servers; on a
#                         2-CPU machine -t1 held the baseline ~15% below what -t2 reaches, which
#                         would flatter the presenced/baseline ratio, so the default is 2
#   READ_CONNS [64]       connections for the GET scenario
#   WRITE_CONNS ["64 256"] connection counts for the setPresence scenario (group commit needs
#                         concurrency, so each is reported)
#   USERS [10000]         distinct user ids; each request picks one at random
#   DIAG [0]              1 adds diagnostic scenarios (GET /healthz; GET with an invalid token,
#                         which stops at authentication with a 401) that explain where time goes
#   DATA_PARENT [$TMPDIR or /tmp]  where the temporary data directory is made (must be a real disk:
#                         the point is to measure with the durable store on)
#   SKIP_BUILD [0]        1 uses the existing target/release binaries
#
# Output: a markdown table on stdout, and raw results in bench/results/http-<UTC date>.json.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
THREADS=${THREADS:-2}
READ_CONNS=${READ_CONNS:-64}
WRITE_CONNS=${WRITE_CONNS:-64 256}
USERS=${USERS:-10000}
DIAG=${DIAG:-0}
DATA_PARENT=${DATA_PARENT:-${TMPDIR:-/tmp}}
SKIP_BUILD=${SKIP_BUILD:-0}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR="$ROOT/bench"
RESULTS_DIR="$BENCH_DIR/results"
export BENCH_DIR BENCH_USERS="$USERS" BENCH_USER_PREFIX="user-"

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

for tool in wrk curl; do
    command -v "$tool" >/dev/null || die "$tool is not installed; run: apt-get install -y $tool"
done
command -v cargo >/dev/null || die "cargo is not installed"

WORK=$(mktemp -d "${DATA_PARENT%/}/presenced-bench.XXXXXX")
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
if awk -v l="${LOAD_BEFORE%% *}" -v n="$(nproc)" 'BEGIN { exit !(l > n / 4) }'; then
    log "WARNING: load average is $LOAD_BEFORE on $(nproc) CPUs: other work will distort the numbers"
fi
FSTYPE=$(df -P -T "$WORK" | awk 'NR == 2 { print $2 }')
case "$FSTYPE" in
    tmpfs|ramfs) die "$WORK is on $FSTYPE: fsync would be free; set DATA_PARENT to a directory on a disk" ;;
esac

if [[ "$SKIP_BUILD" != 1 ]]; then
    log "building (cargo build --release -p presenced -p presenced-bench --bins)"
    (cd "$ROOT" && cargo build --release -p presenced -p presenced-bench --bins --quiet)
fi
BIN="$ROOT/target/release"
[[ -x "$BIN/presenced" && -x "$BIN/bench-baseline" ]] || die "binaries missing in $BIN"

# start NAME CMD...: run a server in the background (in this shell, so the EXIT trap knows its
# pid) and wait for its "listening on" line; sets URL to its base URL.
start() {
    local name=$1; shift
    "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
    local pid=$! i
    PIDS+=("$pid")
    URL=
    for ((i = 0; i < 100; i++)); do
        URL=$(sed -n 's/^listening on \(http:\/\/[^ ]*\)$/\1/p' "$WORK/$name.out")
        [[ -z "$URL" ]] || return 0
        kill -0 "$pid" 2>/dev/null || { cat "$WORK/$name.err" >&2; die "$name exited during start-up"; }
        sleep 0.1
    done
    die "$name did not print 'listening on' within 10 s"
}

DATA="$WORK/data"
mkdir -p "$DATA"
start baseline "$BIN/bench-baseline" --listen 127.0.0.1:0
BASE_URL=$URL
# Throttling is off: the load would exceed Graph's per-application budget within a second.
start presenced "$BIN/presenced" serve --listen 127.0.0.1:0 --data-dir "$DATA" --log-level warn --rate-limit off
PRES_URL=$URL
BENCH_TOKEN=$("$BIN/presenced" token --data-dir "$DATA" --tenant bench --ttl 4h)
export BENCH_TOKEN
log "baseline at $BASE_URL, presenced at $PRES_URL (data dir on $FSTYPE)"

# Pre-populate every user, so reads hit real state: one setPresence per user, 64 in parallel.
SET_BODY='{"sessionId":"bench","availability":"Busy","activity":"InACall","expirationDuration":"PT1H"}'
log "pre-populating $USERS users"
codes=$(curl -sS --no-progress-meter -Z --parallel-max 64 -X POST -o /dev/null -w '%{http_code}\n' \
    -H "Authorization: Bearer $BENCH_TOKEN" -H 'Content-Type: application/json' -d "$SET_BODY" \
    "$PRES_URL/v1.0/users/user-[1-$USERS]/presence/setPresence" | sort | uniq -c)
[[ "$(awk '$2 == 200 { print $1 }' <<<"$codes")" == "$USERS" ]] || die "pre-populating failed: status counts: $codes"
busy=$(curl -s -H "Authorization: Bearer $BENCH_TOKEN" "$PRES_URL/v1.0/users/user-[1-$USERS]/presence" \
    | grep -o '"availability":"Busy"' | wc -l)
[[ "$busy" == "$USERS" ]] || die "after pre-populating, $busy of $USERS users read back as Busy"

# run_wrk TARGET_URL SCRIPT CONNS SECONDS -> prints the BENCH_RESULT JSON object
run_wrk() {
    local url=$1 script=$2 conns=$3 secs=$4 out
    out=$(wrk -t"$THREADS" -c"$conns" -d"${secs}s" --latency -s "$BENCH_DIR/$script" "$url") \
        || { printf '%s\n' "$out" >&2; die "wrk failed"; }
    printf '%s\n' "$out" >>"$WORK/wrk.log"
    sed -n 's/^BENCH_RESULT //p' <<<"$out" | tail -n 1
}

field() { sed -n "s/.*\"$2\":\([-0-9.e+]*\).*/\1/p" <<<"$1"; }

median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# Scenarios: name|script|connections|expected error status count rule|which targets
SCENARIOS=("get-presence c$READ_CONNS|get.lua|$READ_CONNS|ok|both")
for c in $WRITE_CONNS; do
    SCENARIOS+=("setPresence c$c|set.lua|$c|ok|both")
done
if [[ "$DIAG" == 1 ]]; then
    SCENARIOS+=("diag: GET /healthz c$READ_CONNS|healthz.lua|$READ_CONNS|ok|presenced")
    SCENARIOS+=("diag: GET presence, invalid token (401) c$READ_CONNS|badtoken.lua|$READ_CONNS|all401|presenced")
fi

TS=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$RESULTS_DIR"
RESULT_FILE="$RESULTS_DIR/http-$TS.json"
RUNS_JSON=()
SUMMARY_JSON=()
TABLE=()

check_errors() { # JSON SCENARIO TARGET RULE
    local j=$1 status sock
    status=$(field "$j" err_status)
    sock=$(( $(field "$j" err_connect) + $(field "$j" err_read) + $(field "$j" err_write) + $(field "$j" err_timeout) ))
    if [[ "$4" == ok && "$status" != 0 ]]; then
        die "$2 against $3: $status responses with status >= 400 (wrk log: see above); aborting"
    fi
    if [[ "$4" == all401 && "$status" != "$(field "$j" requests)" ]]; then
        die "$2 against $3: expected every response to be 401, got $status errors of $(field "$j" requests)"
    fi
    [[ "$sock" == 0 ]] || die "$2 against $3: $sock socket errors (connect/read/write/timeout): $j"
}

total_runs=0
for s in "${SCENARIOS[@]}"; do
    IFS='|' read -r name script conns rule targets <<<"$s"
    if [[ "$targets" == both ]]; then tlist=(baseline presenced); else tlist=("$targets"); fi
    for t in "${tlist[@]}"; do
        url=$BASE_URL; [[ "$t" == presenced ]] && url=$PRES_URL
        if [[ "$WARMUP" != 0 ]]; then
            j=$(run_wrk "$url" "$script" "$conns" "$WARMUP")
            check_errors "$j" "$name (warm-up)" "$t" "$rule"
        fi
    done
    declare -A RPS=() P50=() P99=() MED=()
    for ((r = 1; r <= ROUNDS; r++)); do
        # Alternate the order each round so slow drift (thermal, page cache, file growth) hits both.
        order=("${tlist[@]}")
        if (( r % 2 == 0 && ${#tlist[@]} == 2 )); then order=("${tlist[1]}" "${tlist[0]}"); fi
        for t in "${order[@]}"; do
            url=$BASE_URL; [[ "$t" == presenced ]] && url=$PRES_URL
            j=$(run_wrk "$url" "$script" "$conns" "$DURATION")
            [[ -n "$j" ]] || die "no BENCH_RESULT line from wrk ($name, $t)"
            check_errors "$j" "$name" "$t" "$rule"
            log "$name | $t | round $r | $(field "$j" rps) req/s | p50 $(field "$j" p50_us) us | p99 $(field "$j" p99_us) us"
            RPS[$t]+=" $(field "$j" rps)"; P50[$t]+=" $(field "$j" p50_us)"; P99[$t]+=" $(field "$j" p99_us)"
            RUNS_JSON+=("{\"scenario\":\"$name\",\"target\":\"$t\",\"round\":$r,\"threads\":$THREADS,\"connections\":$conns,\"result\":$j}")
            total_runs=$((total_runs + 1))
        done
    done
    row="| $name |"
    summary="{\"scenario\":\"$name\",\"connections\":$conns"
    for t in baseline presenced; do
        if [[ -n "${RPS[$t]:-}" ]]; then
            # shellcheck disable=SC2086
            m_rps=$(median ${RPS[$t]}); m50=$(median ${P50[$t]}); m99=$(median ${P99[$t]})
            row+=" $(printf '%.0f' "$m_rps") | $(awk -v v="$m50" 'BEGIN { printf "%.2f", v / 1000 }') | $(awk -v v="$m99" 'BEGIN { printf "%.2f", v / 1000 }') |"
            summary+=",\"$t\":{\"median_rps\":$m_rps,\"median_p50_us\":$m50,\"median_p99_us\":$m99}"
            MED[$t]=$m_rps
        else
            row+=" – | – | – |"
        fi
    done
    if [[ -n "${MED[baseline]:-}" && -n "${MED[presenced]:-}" ]]; then
        ratio=$(awk -v p="${MED[presenced]}" -v b="${MED[baseline]}" 'BEGIN { printf "%.3f", p / b }')
        row+=" $ratio |"
        summary+=",\"ratio_rps\":$ratio"
    else
        row+=" – |"
    fi
    summary+="}"
    TABLE+=("$row")
    SUMMARY_JSON+=("$summary")
    unset RPS P50 P99 MED
done

json_str() { printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g'; }
CPU=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
MEM_KB=$(awk '/^MemTotal/ { print $2 }' /proc/meminfo)
GIT_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
GIT_DIRTY=$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo true || echo false)
join() { local IFS=,; printf '%s' "$*"; }
{
    printf '{"date":"%s","git_rev":"%s","git_dirty":%s,"loadavg_before":"%s","loadavg_after":"%s",' \
        "$TS" "$GIT_REV" "$GIT_DIRTY" "$LOAD_BEFORE" "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf '"machine":{"nproc":%s,"cpu":"%s","mem_kb":%s,"kernel":"%s","data_dir_fs":"%s","wrk":"%s"},' \
        "$(nproc)" "$(json_str "$CPU")" "$MEM_KB" "$(uname -r)" "$FSTYPE" "$(json_str "$(wrk -v 2>&1 | head -n 1)")"
    printf '"config":{"rounds":%s,"duration_s":%s,"warmup_s":%s,"wrk_threads":%s,"read_connections":%s,"write_connections":"%s","users":%s},' \
        "$ROUNDS" "$DURATION" "$WARMUP" "$THREADS" "$READ_CONNS" "$WRITE_CONNS" "$USERS"
    printf '"summary":[%s],"runs":[%s]}\n' "$(join "${SUMMARY_JSON[@]}")" "$(join "${RUNS_JSON[@]}")"
} >"$RESULT_FILE"

echo "HTTP benchmark, $TS (git $GIT_REV$([[ $GIT_DIRTY == true ]] && echo ', dirty')): $(nproc) CPUs ($CPU), wrk -t$THREADS, median of $ROUNDS × ${DURATION}s, $USERS users, data dir on $FSTYPE"
echo
echo "| scenario | baseline req/s | baseline p50 ms | baseline p99 ms | presenced req/s | presenced p50 ms | presenced p99 ms | presenced/baseline req/s |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
printf '%s\n' "${TABLE[@]}"
echo
log "$total_runs measured runs; raw results in ${RESULT_FILE#"$ROOT"/}"
