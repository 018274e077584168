#!/usr/bin/env bash
# The Redis backend beside the embedded one, in one run on this machine: setPresence and GET
# presence (req/s, p50, p99), 650-id getPresencesByUserId, Redis commands per operation (each is
# one client round trip: INFO commandstats), Redis CPU per 1,000 operations (INFO cpu, all
# masters), Redis memory per user (INFO memory and MEMORY USAGE), two nodes against one on the
# Cluster, and how soon a change written through one node reaches a watch stream on the other.
#
# Usage: bench/redis.sh      (needs wrk, curl, redis-server, redis-cli; loopback only, ~3 min)
#
# Knobs (environment variables, defaults in brackets):
#   DURATION [10]   measured seconds per series     WARMUP [3]  unmeasured seconds first
#   CONNS [64]      wrk connections (writes/reads)  USERS [10000] users populated and used
#   BULK_CONNS [1]  wrk connections for 650-id reads
#   SKIP_BUILD [0]  1 uses the existing target/release/presenced
#
# Output: a markdown table on stdout; the raw lines also go to bench/results/redis-<UTC date>.tsv.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DURATION=${DURATION:-10} WARMUP=${WARMUP:-3} CONNS=${CONNS:-64} USERS=${USERS:-10000}
BULK_CONNS=${BULK_CONNS:-1} SKIP_BUILD=${SKIP_BUILD:-0}
export BENCH_DIR="$ROOT/bench" BENCH_USERS="$USERS" BENCH_USER_PREFIX="user-"
mkdir -p "$ROOT/bench/results"
OUT="$ROOT/bench/results/redis-$(date -u +%Y%m%dT%H%M%SZ).tsv"
[[ $SKIP_BUILD == 1 ]] || cargo build --release -q -p presenced --manifest-path "$ROOT/Cargo.toml"
BIN="$ROOT/target/release/presenced"

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

field() { sed -n "s/.*\"$2\":\([-0-9.e+]*\).*/\1/p" <<<"$1"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cluster_port() {  # a free port whose bus port (+10000) is free too
    local p
    while :; do
        p=$(free_port)
        ((p < 55000)) && python3 -c "import socket,sys; s=socket.socket(); s.bind(('127.0.0.1',$p+10000))" 2>/dev/null && { echo "$p"; return; }
    done
}

# redis PORT [extra args...]: one redis-server with fsync on every write.
redis() {
    local port=$1; shift
    mkdir -p "$WORK/redis-$port"
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly yes --appendfsync always \
        --dir "$WORK/redis-$port" "$@" >/dev/null 2>&1 &
    PIDS+=($!)
    for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && return; sleep 0.05; done
    echo "redis-server on $port did not start" >&2; exit 1
}

# Masters' ports of the store under test (one for standalone).
MASTERS=()
start_standalone() { local p; p=$(free_port); redis "$p"; MASTERS=("$p"); STORE="redis://127.0.0.1:$p"; }
start_cluster() {
    local ports=() p hosts=()
    for _ in 1 2 3 4 5 6; do
        p=$(cluster_port); redis "$p" --cluster-enabled yes --cluster-node-timeout 2000 --repl-diskless-sync-delay 0
        ports+=("$p"); hosts+=("127.0.0.1:$p")
    done
    redis-cli --cluster create "${hosts[@]}" --cluster-replicas 1 --cluster-yes >/dev/null
    for _ in $(seq 200); do
        local ok=1
        for p in "${ports[@]}"; do
            redis-cli -p "$p" cluster info | grep -q cluster_state:ok || ok=0
            redis-cli -p "$p" info replication | grep -qE 'role:master|master_link_status:up' || ok=0
        done
        ((ok)) && break; sleep 0.1
    done
    MASTERS=()
    for p in "${ports[@]}"; do redis-cli -p "$p" role | head -1 | grep -q master && MASTERS+=("$p"); done
    STORE="redis+cluster://$(IFS=,; echo "${hosts[*]}")"
}

SECRET="$WORK/secret"
python3 -c 'import base64,os; print(base64.b64encode(os.urandom(32)).decode())' >"$SECRET"
chmod 600 "$SECRET"

# node STORE [ARGS...]: a presenced node; prints its base URL and its metrics URL.
node() {
    local data="$WORK/data-$RANDOM$RANDOM" out="$WORK/out-$RANDOM$RANDOM" url= metrics=
    mkdir -p "$data"
    "$BIN" serve --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --data-dir "$data" \
        --jwt-secret-file "$SECRET" --rate-limit off --log-level warn --store "$@" >"$out" 2>"$out.err" &
    PIDS+=($!)
    for _ in $(seq 100); do
        url=$(sed -n 's/^listening on \(http:\/\/[^ ]*\)$/\1/p' "$out")
        metrics=$(sed -n 's/^metrics on \(http:\/\/[^ ]*\)\/metrics$/\1/p' "$out")
        [[ -z "$url" || -z "$metrics" ]] || break; sleep 0.1
    done
    [[ -n "$url" ]] || { cat "$out.err" >&2; exit 1; }
    echo "$url $metrics"
}

BENCH_TOKEN=$("$BIN" token --jwt-secret-file "$SECRET" --tenant bench --ttl 4h)
export BENCH_TOKEN

populate() {
    curl -sS --no-progress-meter -Z --parallel-max 64 -X POST -o /dev/null \
        -H "Authorization: Bearer $BENCH_TOKEN" -H 'Content-Type: application/json' \
        -d '{"sessionId":"bench","availability":"Busy","activity":"InACall","expirationDuration":"PT1H"}' \
        "$1/v1.0/users/user-[1-$USERS]/presence/setPresence"
}

# "round_trips fcall_usec cpu_seconds": the node's requests to Redis (its /metrics), and summed
# over the masters the time spent in presenced's functions (INFO commandstats, FCALL and
# FCALL_RO: each write and most reads are one) and Redis's CPU (INFO cpu).
redis_counters() {
    local url=$1 trips usec=0 cpu=0 p
    trips=$(curl -sS "$url/metrics" | sed -n 's/^presenced_store_round_trips_total \([0-9]*\).*/\1/p')
    for p in "${MASTERS[@]}"; do
        u=$(redis-cli -p "$p" info commandstats | tr -d '\r' |
            awk -F'[=,]' '/^cmdstat_fcall(_ro)?:/ { u += $4 } END { print u + 0 }')
        usec=$((usec + u))
        cpu=$(redis-cli -p "$p" info cpu | tr -d '\r' |
            awk -F: -v acc="$cpu" '/^used_cpu_(sys|user):/ { acc += $2 } END { print acc }')
    done
    echo "${trips:-0} $usec $cpu"
}

# wrk_run URL SCRIPT CONNS: prints the BENCH_RESULT JSON.
wrk_run() {
    local t=2; (($3 >= 2)) || t=1
    wrk -t$t -c"$3" -d"${WARMUP}s" -s "$BENCH_DIR/$2" "$1" >/dev/null
    wrk -t$t -c"$3" -d"${DURATION}s" --latency -s "$BENCH_DIR/$2" "$1" | sed -n 's/^BENCH_RESULT //p' | tail -n 1
}

# series BACKEND WHAT URL SCRIPT CONNS: one measured series with Redis's share, as a table row.
series() {
    local backend=$1 what=$2 url=$3 script=$4 conns=$5 before after j n
    [[ ${#MASTERS[@]} == 0 ]] || before=$(redis_counters "$METRICS")
    j=$(wrk_run "$url" "$script" "$conns")
    [[ "$(field "$j" err_status)" == 0 ]] || { echo "$backend $what: error responses: $j" >&2; exit 1; }
    n=$(field "$j" requests)
    local per="-" us="-" cpu="-"
    if [[ ${#MASTERS[@]} != 0 ]]; then
        after=$(redis_counters "$METRICS")
        read -r c0 u0 p0 <<<"$before"; read -r c1 u1 p1 <<<"$after"
        # The warm-up ran between the counters too: scale by the measured share.
        per=$(awk -v c="$((c1 - c0))" -v n="$n" -v w="$WARMUP" -v d="$DURATION" 'BEGIN { printf "%.2f", c / (n * (w + d) / d) }')
        us=$(awk -v u="$((u1 - u0))" -v n="$n" -v w="$WARMUP" -v d="$DURATION" 'BEGIN { printf "%.0f", 1000 * u / (n * (w + d) / d) }')
        cpu=$(awk -v a="$p0" -v b="$p1" -v n="$n" -v w="$WARMUP" -v d="$DURATION" 'BEGIN { printf "%.0f", 1e6 * (b - a) / (n * (w + d) / d) }')
    fi
    printf '| %s | %s | %.0f | %s | %s | %s | %s | %s |\n' "$backend" "$what" "$(field "$j" rps)" \
        "$(field "$j" p50_us)" "$(field "$j" p99_us)" "$per" "$us" "$cpu"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$backend" "$what" "$(field "$j" rps)" "$(field "$j" p50_us)" \
        "$(field "$j" p99_us)" "$per" "$us" "$cpu" >>"$OUT"
}

echo "machine: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1); $(date -u +%Y-%m-%dT%H:%MZ)"
echo
echo '| backend | operation | req/s | p50 µs | p99 µs | round trips to Redis per op | Redis function µs per 1,000 ops | Redis CPU µs per 1,000 ops |'
echo '|---|---|---:|---:|---:|---:|---:|---:|'
printf 'backend\top\treq_s\tp50_us\tp99_us\tround_trips_per_op\tredis_function_us_per_1000\tredis_cpu_us_per_1000\n' >"$OUT"

for backend in embedded redis cluster; do
    MASTERS=()
    case $backend in
        embedded) STORE=embedded ;;
        redis) start_standalone ;;
        cluster) start_cluster ;;
    esac
    used_before=0
    [[ $backend != redis ]] || used_before=$(redis-cli -p "${MASTERS[0]}" info memory | tr -d '\r' | sed -n 's/^used_memory://p')
    read -r URL METRICS < <(node "$STORE")
    populate "$URL"
    series "$backend" "setPresence" "$URL" set.lua "$CONNS"
    series "$backend" "GET presence" "$URL" get.lua "$CONNS"
    series "$backend" "getPresencesByUserId, 650 ids" "$URL" bulk650.lua "$BULK_CONNS"
    if [[ $backend == redis ]]; then
        used_after=$(redis-cli -p "${MASTERS[0]}" info memory | tr -d '\r' | sed -n 's/^used_memory://p')
        key=$(redis-cli -p "${MASTERS[0]}" --scan --pattern 'presenced:{p*}:u:*' | sed -n 1p)
        MEMORY_LINE="Redis memory per user (standalone, $USERS users, one session each, after the log's window filled): $(( (used_after - used_before) / USERS )) B of used_memory; one user's record: $(redis-cli -p "${MASTERS[0]}" memory usage "$key") B (MEMORY USAGE)"
    fi
    if [[ $backend == cluster ]]; then
        # The cost of holding each 200 until a replica has the write (WAIT 1).
        read -r URL_W METRICS < <(node "$STORE" --redis-wait-replicas 1)
        series "cluster, --redis-wait-replicas 1" "setPresence" "$URL_W" set.lua "$CONNS"
        read -r URL_B _ < <(node "$STORE")
        one=$(wrk_run "$URL" set.lua "$CONNS")
        wrk -t1 -c$((CONNS / 2)) -d"${WARMUP}s" -s "$BENCH_DIR/set.lua" "$URL_B" >/dev/null &
        w=$!
        wrk -t1 -c$((CONNS / 2)) -d"${WARMUP}s" -s "$BENCH_DIR/set.lua" "$URL" >/dev/null; wait $w
        wrk -t1 -c$((CONNS / 2)) -d"${DURATION}s" -s "$BENCH_DIR/set.lua" "$URL_B" | sed -n 's/^BENCH_RESULT //p' >"$WORK/b" &
        w=$!
        a2=$(wrk -t1 -c$((CONNS / 2)) -d"${DURATION}s" -s "$BENCH_DIR/set.lua" "$URL" | sed -n 's/^BENCH_RESULT //p')
        wait $w
        b2=$(cat "$WORK/b")
        TWO_LINE="Two nodes against one on the Cluster (setPresence, $CONNS connections in all): one node $(printf '%.0f' "$(field "$one" rps)") req/s; two nodes $(awk -v a="$(field "$a2" rps)" -v b="$(field "$b2" rps)" 'BEGIN { printf "%.0f", a + b }') req/s ($(awk -v o="$(field "$one" rps)" -v a="$(field "$a2" rps)" -v b="$(field "$b2" rps)" 'BEGIN { printf "%.2f", (a + b) / o }')x)"
        # How soon a change reaches a watch stream: on the node written through, and on the other.
        same=$(python3 "$BENCH_DIR/cross_node_latency.py" "$URL" "$URL" "$BENCH_TOKEN" 200)
        cross=$(python3 "$BENCH_DIR/cross_node_latency.py" "$URL" "$URL_B" "$BENCH_TOKEN" 200)
        LATENCY_LINE="Change to watch stream on the Cluster (200 flips, from sending the write; its round trip included): watched on the node written through p50 $(field "$same" p50_ms) ms, p99 $(field "$same" p99_ms) ms; watched on the other node p50 $(field "$cross" p50_ms) ms, p99 $(field "$cross" p99_ms) ms"
    fi
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    PIDS=()
done
echo
echo "$MEMORY_LINE"
echo "$TWO_LINE"
echo "$LATENCY_LINE"
echo "raw lines in ${OUT#"$ROOT"/}"
