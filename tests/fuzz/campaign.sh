#!/usr/bin/env bash
# A long fuzzing campaign: every target (or those named), each for
# SECONDS of wall-clock time or, with -c, until it has had CPU_SECONDS of
# processor time, at the lowest priority; a crash is written to
# tests/fuzz/artifacts/TARGET/ and that target starts again for the time
# left. Prints a markdown table for BENCHMARKS.md ("Fuzzing").
#
#   tests/fuzz/campaign.sh [-t SECONDS | -c CPU_SECONDS] [-j JOBS]
#                          [-b BIN_DIR] [-o NAME] [TARGET...]
#
# Defaults: 1800 s of wall time, every target at once, a fresh build;
# -c budgets processor time instead (what a target really got on a
# machine that is busy with other work), -j runs at most JOBS targets at
# a time in the order given (the others wait their turn), -b runs the
# binaries in BIN_DIR as they are (no build: e.g. those of an earlier
# commit), -o names the run (its logs in tests/fuzz/scratch/campaign-NAME/).
#
# Builds as run.sh does, then runs copies of the binaries (a rebuild during
# the campaign does not touch them). Per target: wall time, the CPU time it
# really got (user + system, /usr/bin/time), the
# executions, cov and ft from libFuzzer's last stats line, the scratch
# corpus (tests/fuzz/scratch/TARGET) and the crashes written. Targets run
# side by side: on a machine with fewer cores than targets they share
# them, and the CPU column says how much each got.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

seconds=1800
cpu_seconds=0
jobs=0
bin_dir=""
name="$(date -u +%Y%m%dT%H%M)"
targets=()
while (($#)); do
    case "$1" in
        -t) seconds="$2"; shift ;;
        -c) cpu_seconds="$2"; shift ;;
        -j) jobs="$2"; shift ;;
        -b) bin_dir="$2"; shift ;;
        -o) name="$2"; shift ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        *) targets+=("$1") ;;
    esac
    shift
done
if ((${#targets[@]} == 0)); then
    for file in fuzz_targets/*.rs; do
        targets+=("$(basename "$file" .rs)")
    done
fi

if [ -z "$bin_dir" ]; then
    cargo +nightly fuzz build --fuzz-dir "$here" --sanitizer none --debug-assertions >&2
    bin_dir="$here/target/x86_64-unknown-linux-gnu/release"
fi
run="$here/scratch/campaign-$name"
mkdir -p "$run/bin" artifacts
for target in "${targets[@]}"; do
    cp "$bin_dir/$target" "$run/bin/"
    mkdir -p "scratch/$target" "artifacts/$target"
done

if ((cpu_seconds > 0)); then
    budget="${cpu_seconds} CPU s"
else
    budget="${seconds} s"
fi
echo "== $(date -u +%FT%TZ): ${#targets[@]} targets, ${budget} each, $( ((jobs > 0)) && echo "$jobs at a time" || echo "side by side") on $(nproc) cores" >&2
# The processor time (user + system, all threads) PID has had, in seconds.
cpu_of() {
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    set -- ${stat##*) }
    echo $(((${12} + ${13}) / $(getconf CLK_TCK)))
}
# One target: libFuzzer until SECONDS have passed (or, with -c, until its
# runs have had CPU_SECONDS of processor time: checked every 5 s, then
# interrupted, which makes libFuzzer print its final stats); after a
# crash (written to artifacts/TARGET/) it starts again for what is left.
campaign() {
    local target="$1" log="$run/$1.log" end=$(($(date +%s) + seconds)) left used=0 pid now
    : >"$log"
    while true; do
        if ((cpu_seconds > 0)); then
            left=$((cpu_seconds - used))
        else
            left=$((end - $(date +%s)))
        fi
        ((left > 5)) || break
        "$run/bin/$target" -timeout=10 -rss_limit_mb=2048 \
            -max_total_time=$( ((cpu_seconds > 0)) && echo 0 || echo "$left") \
            -print_final_stats=1 -artifact_prefix="artifacts/$target/" \
            "scratch/$target" "corpus/$target" >>"$log" 2>&1 &
        pid=$!
        now=0
        while ((cpu_seconds > 0)) && kill -0 "$pid" 2>/dev/null; do
            sleep 5
            now="$(cpu_of "$pid")" || break
            if ((used + now >= cpu_seconds)); then
                kill -INT "$pid" 2>/dev/null || true
                break
            fi
        done
        if wait "$pid"; then
            break
        fi
        used=$((used + now))
        if ((cpu_seconds > 0 && used >= cpu_seconds)); then
            break
        fi
    done
}
export -f campaign cpu_of
export run seconds cpu_seconds
pids=()
for target in "${targets[@]}"; do
    while ((jobs > 0)) && (($(jobs -rp | wc -l) >= jobs)); do
        wait -n || true
    done
    echo "== $(date -u +%FT%TZ): $target starts" >&2
    /usr/bin/time -v -o "$run/$target.time" nice -n 19 bash -c "campaign $target" &
    pids+=($!)
done
for pid in "${pids[@]}"; do
    wait "$pid" || true
done
echo "== $(date -u +%FT%TZ): done" >&2

# libFuzzer's stats lines (`#N ... cov: C ft: F corp: K/...`) and, per
# run, `stat::number_of_executed_units: N`.
field() { grep -E '^#[0-9]+' "$1" | tail -1 | grep -oE "$2: [0-9]+" | awk '{print $2}'; }
table="| target | wall | CPU s | executions | exec/CPU s | cov | ft | corpus | crashes |
|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for target in "${targets[@]}"; do
    log="$run/$target.log"
    runs="$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | awk '{n+=$2} END{print n+0}')"
    wall="$(grep -oE 'Elapsed \(wall clock\) time.*: .*' "$run/$target.time" | awk '{print $NF}')"
    user="$(grep -oE 'User time \(seconds\): [0-9.]+' "$run/$target.time" | awk '{print $NF}')"
    sys="$(grep -oE 'System time \(seconds\): [0-9.]+' "$run/$target.time" | awk '{print $NF}')"
    cpu="$(awk -v u="$user" -v s="$sys" 'BEGIN{printf "%.0f", u+s}')"
    speed="$(awk -v r="$runs" -v c="$cpu" 'BEGIN{printf "%.0f", (c>0 ? r/c : 0)}')"
    # What this run wrote, from its own log (another run may write the
    # same artifact file meanwhile).
    crashes="$(grep -cE 'Test unit written to' "$log" || true)"
    corpus="$(find "scratch/$target" -type f | wc -l)"
    table+="
| $target | $wall | $cpu | $runs | $speed | $(field "$log" cov) | $(field "$log" ft) | $corpus | $crashes |"
done
echo "$table" | tee "$run/summary.md"
