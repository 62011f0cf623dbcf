#!/usr/bin/env bash
# after_burst_profile.sh: profile burrow's plain-HTTP load fresh and again
# after an `h2load -m10` burst on the same process (issue 17: a load that
# overflows the channel pool leaves the HTTP path slower afterwards).
#
#   BURROW_BIN=target/release/burrow benches/after_burst_profile.sh
#
# Runs benches/compare.sh for burrow-http-pty and burrow-h2-m10, two
# rounds (round 2 runs -m10 first), and `perf record -a -g` for 6 s during
# each round's wrk -c64 run. Writes OUT_DIR/{fresh,after}.data and
# OUT_DIR/report.md; read them with
#   perf report -i OUT_DIR/after.data --comm tokio-rt-worker --no-children -g none --sort dso,symbol
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT_DIR=${OUT_DIR:-$ROOT/target/bench-results/after-burst}
BURROW_BIN=${BURROW_BIN:-$ROOT/target/release/burrow}
mkdir -p "$OUT_DIR"
command -v perf >/dev/null || { echo "perf is required (apt-get install linux-perf)" >&2; exit 1; }

ONLY=burrow-http-pty,burrow-h2-m10 DURATION=12 LAT_DURATION=2 ROUNDS=2 WARMUP=1 SANDHOLE=0 \
    BURROW_BIN="$BURROW_BIN" "$ROOT/benches/compare.sh" >"$OUT_DIR/report.md" 2>"$OUT_DIR/compare.log" &
compare=$!

# Bounded waits (two minutes each) for a load generator to start or end.
wait_for() { for _ in $(seq 1 1200); do pgrep -f "$1" >/dev/null && return 0; sleep 0.1; done; return 1; }
wait_gone() { for _ in $(seq 1 1200); do pgrep -f "$1" >/dev/null || return 0; sleep 0.1; done; return 1; }
record() { sleep 1.5; perf record -a -F 999 -g -o "$OUT_DIR/$1.data" -- sleep 6 >/dev/null 2>&1; }

wait_for "wrk -t2 -c64" && record fresh
wait_gone "wrk -t2 -c64"
for _ in 1 2; do wait_for "h2load -t2 -c64" && wait_gone "h2load -t2 -c64"; done
wait_for "wrk -t2 -c64" && record after
wait "$compare"
grep 'round .:' "$OUT_DIR/compare.log"
for f in fresh after; do
    echo "== $f: share of samples by process"
    perf report -i "$OUT_DIR/$f.data" --no-children -g none --sort comm --stdio 2>/dev/null | grep '%' | head -5
done
