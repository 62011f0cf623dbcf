#!/usr/bin/env bash
# Runs burrow's fuzz targets (cargo-fuzz, libFuzzer), one at a time, at the
# lowest priority, and prints a markdown table for BENCHMARKS.md.
#
#   tests/fuzz/run.sh [-t SECONDS] [TARGET...]   fuzz each target SECONDS
#                                                (default 60), all by default
#   tests/fuzz/run.sh --ci                       CI: build once, replay every
#                                                committed corpus, then fuzz
#                                                each target CI_SECONDS (15)
#
# Each run reads the committed seeds (tests/fuzz/corpus/TARGET) and a
# scratch corpus (tests/fuzz/scratch/TARGET, kept between runs, ignored by
# git); libFuzzer writes what it finds to the scratch one only, so the
# seed folders stay as committed. Crashes go to tests/fuzz/artifacts/TARGET/. Any crash,
# timeout or leak fails the run (exit 1) after every target has had its
# turn. The table goes to stdout and to tests/fuzz/scratch/summary.md.
#
# Environment: FUZZ_JOBS_TIMEOUT (per-input timeout, s; default 10),
# FUZZ_RSS_MB (per-process memory cap; default 2048), CI_SECONDS.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

seconds=60
ci=false
targets=()
while (($#)); do
    case "$1" in
        --ci) ci=true ;;
        -t) seconds="$2"; shift ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) targets+=("$1") ;;
    esac
    shift
done
if $ci; then
    seconds="${CI_SECONDS:-15}"
fi
if ((${#targets[@]} == 0)); then
    for file in fuzz_targets/*.rs; do
        targets+=("$(basename "$file" .rs)")
    done
fi

# The build: no sanitizer (the targets are safe Rust; what they look for
# are panics and broken properties), optimised, with debug assertions and
# overflow checks on.
build=(cargo +nightly fuzz build --fuzz-dir "$here" --sanitizer none --debug-assertions)
started=$(date +%s)
echo "== build: ${build[*]}" >&2
"${build[@]}" >&2
echo "== built in $(($(date +%s) - started)) s" >&2
bin_dir="$here/target/x86_64-unknown-linux-gnu/release"

mkdir -p scratch artifacts
timeout_s="${FUZZ_JOBS_TIMEOUT:-10}"
rss="${FUZZ_RSS_MB:-2048}"
failed=()
table="| target | seconds | executions | exec/s | cov | ft | corpus | crashes |
|---|---:|---:|---:|---:|---:|---:|---:|"

# The final stats line of libFuzzer's log: `#N DONE cov: C ft: F corp: K/…`.
stat() {
    local log="$1" key="$2"
    grep -E "^#[0-9]+" "$log" | tail -1 | grep -oE "$key: ?[0-9]+" | grep -oE '[0-9]+$' || echo 0
}

for target in "${targets[@]}"; do
    seeds="corpus/$target"
    scratch="scratch/$target"
    mkdir -p "$scratch" "artifacts/$target"
    common=(-artifact_prefix="artifacts/$target/" -timeout="$timeout_s" -rss_limit_mb="$rss"
        -print_final_stats=1)
    ok=true
    if $ci && [ -d "$seeds" ]; then
        # Every committed seed (and every crash turned seed) must pass.
        echo "== $target: replaying $seeds" >&2
        if ! nice -n 19 "$bin_dir/$target" "${common[@]}" -runs=0 "$seeds" \
            >"scratch/$target.replay.log" 2>&1; then
            tail -30 "scratch/$target.replay.log" >&2
            ok=false
        fi
    fi
    echo "== $target: fuzzing ${seconds} s" >&2
    log="scratch/$target.log"
    status=0
    nice -n 19 "$bin_dir/$target" "${common[@]}" -max_total_time="$seconds" \
        "$scratch" "$seeds" >"$log" 2>&1 || status=$?
    runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo 0)
    speed=$(grep -oE 'stat::average_exec_per_sec: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo 0)
    corpus=$(find "$scratch" -type f | wc -l)
    crashes=0
    if ((status != 0)); then
        crashes=$(grep -cE 'Test unit written to' "$log" || true)
        tail -40 "$log" >&2
        ok=false
    fi
    $ok || failed+=("$target")
    table+="
| $target | $seconds | $runs | $speed | $(stat "$log" cov) | $(stat "$log" ft) | $corpus | $crashes |"
done

echo "$table" | tee scratch/summary.md
echo "total: $(($(date +%s) - started)) s" >&2
# A plain closing line for CI's log.
echo "fuzz: $((${#targets[@]} - ${#failed[@]})) passed, ${#failed[@]} failed"
if ((${#failed[@]})); then
    echo "FAILED: ${failed[*]} (inputs in tests/fuzz/artifacts/)" >&2
    exit 1
fi
