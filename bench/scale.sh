#!/usr/bin/env bash
# Scale benchmark of the embedded store, in-process (bench-scale): resident memory per held
# session with the restart it implies, and the timer storm (N sessions expiring at the same
# instant, read latency meanwhile). Each mode measures its own baseline in the same run.
#
# Usage: bench/scale.sh            (from anywhere; needs cargo)
#
# Knobs (environment variables, defaults in brackets):
#   SESSIONS [1000000]     sessions for both modes
#   SCALE_10M [0]          1 also runs the memory mode with 10,000,000 sessions, with user ids that
#                          sort in creation order (--sequential-keys: same memory, redb appends
#                          instead of inserting at random, so the load is ~3x faster). Needs ~17 GiB
#                          of RAM and, on 2 CPUs, ~12 min to load plus the restart, which reads the
#                          whole ~7 GB file (I/O-bound on a slow disk: 8 min here); loading stops
#                          early (and the report extrapolates) if RSS would pass RSS_LIMIT_GIB
#   RSS_LIMIT_GIB [18]     see SCALE_10M
#   MODES ["memory storm"] which modes to run
#   READS_PER_MS [10]      storm: reads issued per millisecond by the reader task
#   DATA_PARENT [$TMPDIR or /tmp]  where the temporary data directory is made (must be a real disk)
#   SKIP_BUILD [0]         1 uses the existing target/release/bench-scale
#
# Output: JSON lines and a markdown table per run on stdout (progress on stderr); everything is
# also written to bench/results/scale-<UTC date>.txt.
set -euo pipefail

SESSIONS=${SESSIONS:-1000000}
SCALE_10M=${SCALE_10M:-0}
RSS_LIMIT_GIB=${RSS_LIMIT_GIB:-18}
MODES=${MODES:-memory storm}
READS_PER_MS=${READS_PER_MS:-10}
DATA_PARENT=${DATA_PARENT:-${TMPDIR:-/tmp}}
SKIP_BUILD=${SKIP_BUILD:-0}
export DATA_PARENT

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RESULTS_DIR="$ROOT/bench/results"
BIN="$ROOT/target/release/bench-scale"

log() { printf '[scale] %s\n' "$*" >&2; }
die() { printf '[scale] ERROR: %s\n' "$*" >&2; exit 1; }

command -v cargo >/dev/null || die "cargo is not installed"
FSTYPE=$(df -P -T "$DATA_PARENT" | awk 'NR == 2 { print $2 }')
case "$FSTYPE" in
    tmpfs|ramfs) die "$DATA_PARENT is on $FSTYPE: fsync would be free; set DATA_PARENT to a directory on a disk" ;;
esac

if [[ "$SKIP_BUILD" != 1 ]]; then
    log "building (cargo build --release -p presenced-bench --bin bench-scale)"
    (cd "$ROOT" && cargo build --release -p presenced-bench --bin bench-scale --quiet)
fi
[[ -x "$BIN" ]] || die "$BIN is missing"

mkdir -p "$RESULTS_DIR"
OUT="$RESULTS_DIR/scale-$(date -u +%Y%m%dT%H%M%SZ).txt"

LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
if awk -v l="${LOAD%% *}" -v n="$(nproc)" 'BEGIN { exit !(l > n / 4) }'; then
    log "WARNING: load average is $LOAD on $(nproc) CPUs: other work will distort the numbers"
fi
{
    echo "# bench/scale.sh $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "# commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (dirty tree)')"
    echo "# $(nproc) CPUs, $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo), data dir on $FSTYPE, load average $LOAD"
} | tee "$OUT"

run() {
    log "bench-scale $*"
    "$BIN" "$@" | tee -a "$OUT"
    echo | tee -a "$OUT"
}

for mode in $MODES; do
    case "$mode" in
        memory) run memory --sessions "$SESSIONS" --rss-limit-gib "$RSS_LIMIT_GIB" ;;
        storm) run storm --sessions "$SESSIONS" --reads-per-ms "$READS_PER_MS" ;;
        *) die "unknown mode $mode" ;;
    esac
done
if [[ "$SCALE_10M" == 1 ]]; then
    run memory --sessions 10000000 --sequential-keys --rss-limit-gib "$RSS_LIMIT_GIB"
fi
log "written to $OUT"
