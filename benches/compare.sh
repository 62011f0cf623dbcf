#!/usr/bin/env bash
# benches/compare.sh: burrow side by side with OpenSSH `sshd -R`, nginx → `sshd -R`
# and sandhole, in one run on loopback. Prints a markdown table of medians,
# burrow/baseline ratios, server RSS and server CPU per request.
#
# Usage (from anywhere; paths are relative to the repository):
#
#   benches/compare.sh                         # full run, about 20 min on 2 cores
#   DURATION=5 ROUNDS=1 benches/compare.sh     # quick smoke run, about 3 min
#   ONLY=sshd-pty,burrow-http-pty benches/compare.sh
#   BURROW_BIN=/path/to/burrow benches/compare.sh   # skip `cargo build --release`
#
# Environment knobs (defaults in parentheses):
#   DURATION      (20)  seconds of each throughput run: wrk -t2 -c64 on a 1 KiB file
#   LAT_DURATION  (10)  seconds of each latency run: wrk -t1 -c1 --latency (p99)
#   ROUNDS        (3)   rounds; every round runs every target once, and the order
#                       reverses every other round (A B C, C B A, A B C ...) so
#                       slow drift (thermal, other jobs) hits all targets alike;
#                       the table shows the median over rounds
#   WARMUP        (2)   seconds of wrk warm-up per target before round 1
#   ONLY          (all) comma/space separated subset of the targets below
#   BURROW_BIN    (build) burrow binary; unset: `cargo build --release` here
#                       (honours CARGO_TARGET_DIR) and use target/release/burrow
#   SANDHOLE      (1)   0: do not build or run sandhole (reference figures are used)
#   SANDHOLE_BIN  ()    a sandhole 0.10 binary to use instead of building one
#   SANDHOLE_LOG  (warn) RUST_LOG for sandhole (at info it logs every request)
#   BENCH_CACHE   (~/.cache/burrow-bench) where sandhole is built once
#                       (`cargo install sandhole --version '^0.10'`); a failed
#                       build is remembered there: SANDHOLE_REBUILD=1 retries
#   KEEP_TMP      (0)   1: keep the temporary directory (all configs and logs)
#   PERF_DIR      ()    a directory: `perf record -g` each server process (each
#                       node of a cluster apart) during every throughput run,
#                       to PERF_DIR/TARGET.rROUND.PID.data (PERF_FREQ, 499 Hz;
#                       build with frame pointers for call graphs, see
#                       BENCHMARKS.md)
#   BURROW_ARGS   ()    extra burrow flags, appended (A/B a lever, e.g.
#                       BURROW_ARGS="--channel-pool-size 0")
#   BULK_ONLY     (0)   1: measure only the 100 MiB download and upload (no
#                       wrk runs; the warm-up is one 100 MiB download)
#   RUSSH_TUNNEL_BIN () the russh client (benches/russh_tunnel.rs); unset:
#                       `cargo build --profile fastrel --bench russh_tunnel`
#   ASYNCSSH_PYTHON () a python with asyncssh; unset: a virtualenv made once
#                       in BENCH_CACHE/asyncssh-venv (`pip install asyncssh`)
#
# Targets (every one on 127.0.0.1; the origin is nginx serving /1k, /100m and
# reading a 100 MiB POST on /upload; every ssh client is stock OpenSSH with
# -c chacha20-poly1305@openssh.com, a throwaway ed25519 key,
# StrictHostKeyChecking=no, UserKnownHostsFile=/dev/null, ExitOnForwardFailure=yes):
#   origin           wrk → origin nginx directly
#   sshd-pty         wrk → port opened by `sshd -R` (throwaway sshd on a free port);
#                    the client runs with a pty: ssh -tt -R ... sleep N
#   sshd-N           the same with an `ssh -N -R` client
#   nginx-sshd       wrk → a second nginx (upstream keepalive, proxy_http_version
#                    1.1, request buffering off) → the sshd-pty port
#   sandhole         wrk → sandhole 0.10 HTTP (pty client, --disable-http-logs,
#                    RUST_LOG=warn: no per-request logging, like burrow)
#   burrow-http-pty  wrk → burrow plain HTTP (--http-mode proxy), pty client
#   burrow-http-N    the same with an `ssh -N` client
#   burrow-https     wrk → burrow HTTPS (HTTP/1.1, Host header), pty client's tunnel
#   burrow-https-N   wrk → burrow HTTPS (HTTP/1.1), the -N client's tunnel
#   burrow-h2        h2load -m1 → burrow HTTPS (HTTP/2), pty client's tunnel
#   burrow-h2-m10    h2load -m10 (ten streams at a time per connection), same
#   cluster-owner    two burrow nodes on one redis-server (127.0.0.1 and
#                    127.0.0.2, --http-mode proxy); a pty client on node 1;
#                    wrk → node 1, which holds the tunnel
#   cluster-via      the same tunnel, wrk → node 2, which forwards every
#                    request over the cluster link to node 1 (CPU and RSS
#                    count both nodes)
#
# The other tunnel clients, only when named in ONLY (the alias `clients` is
# sshd-N, burrow-https-N and all of these); CLIENT is one of russh (an
# in-process russh client: benches/russh_tunnel.rs), asyncssh and paramiko
# (tests/scripts/*_tunnel.py), plink (putty-tools), dbclient (dropbear-bin),
# each with its own default cipher choice:
#   sshd-CLIENT         → port opened by `sshd -R` for CLIENT (no session,
#                       like -N; logs in with the client key)
#   burrow-https-CLIENT → burrow HTTPS (HTTP/1.1), CLIENT's tunnel (random@,
#                       keyless, with the session where the URL is printed)
# Bulk speed per client, as BENCHMARKS.md records it:
#   BULK_ONLY=1 ONLY=clients,sandhole,burrow-https,burrow-http-pty,sshd-pty ROUNDS=5 benches/compare.sh
#
# Measured per target and round: req/s (wrk -t2 -c64 -dDURATION), p99 latency
# (wrk -t1 -c1 --latency), 100 MiB download and upload (curl; with the CPU
# seconds the server and the tunnel client used for each), server CPU per
# request (utime+stime deltas from /proc/PID/stat of the server processes over
# the throughput run ÷ the requests wrk counted) and server RSS (VmRSS, VmHWM).
# Non-2xx answers and socket errors are counted and shown.
#
# Output: progress on stderr; the report (command, machine, tables) on stdout
# and in target/bench-results/compare-<timestamp>.md, with the raw numbers in
# compare-<timestamp>.tsv beside it.
#
# Needs: bash 4, python3, curl, wrk, nginx; optional: openssh-server (sshd
# targets), nghttp2-client (h2load), cargo (burrow build, sandhole). Missing
# packages are installed with apt-get when running as root on Debian/Ubuntu;
# otherwise the targets that need them are skipped with a message. All
# processes run as the current user in a temporary directory that is removed,
# and every process started here is stopped, at exit.

set -euo pipefail

# Knobs as the caller set them, to print the exact command.
CALLER_ENV=""
for v in DURATION LAT_DURATION ROUNDS WARMUP ONLY BULK_ONLY BURROW_BIN SANDHOLE SANDHOLE_BIN SANDHOLE_LOG BENCH_CACHE BURROW_ARGS RUSSH_TUNNEL_BIN ASYNCSSH_PYTHON; do
    if [[ -n ${!v:-} ]]; then CALLER_ENV+="$v=\"${!v}\" "; fi
done
INVOCATION="${CALLER_ENV}$0${*:+ $*}"

DURATION=${DURATION:-20}
LAT_DURATION=${LAT_DURATION:-10}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-2}
SANDHOLE=${SANDHOLE:-1}
BENCH_CACHE=${BENCH_CACHE:-$HOME/.cache/burrow-bench}
KEEP_TMP=${KEEP_TMP:-0}
BULK_ONLY=${BULK_ONLY:-0}
export PATH="$PATH:/usr/sbin:/sbin"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HELPER="$ROOT/benches/compare_report.py"
DEFAULT_TARGETS=(origin sshd-pty sshd-N nginx-sshd sandhole burrow-http-pty burrow-http-N burrow-https burrow-https-N burrow-h2 burrow-h2-m10 cluster-owner cluster-via)
# The other tunnel clients (bulk speed per client): each through `sshd -R`
# and through burrow HTTPS, in pairs. Only run when named in ONLY (or with
# the alias `clients`).
CLIENT_NAMES=(russh asyncssh paramiko plink dbclient)
SSHD_CLIENTS=()
BURROW_CLIENTS=()
CLIENT_PAIRS=()
for c in "${CLIENT_NAMES[@]}"; do
    SSHD_CLIENTS+=("sshd-$c")
    BURROW_CLIENTS+=("burrow-https-$c")
    CLIENT_PAIRS+=("sshd-$c" "burrow-https-$c")
done
ALL_TARGETS=("${DEFAULT_TARGETS[@]}" "${CLIENT_PAIRS[@]}")
# ONLY=clients: OpenSSH -N and every other client, through sshd -R and burrow HTTPS.
CLIENTS_ALIAS=(sshd-N burrow-https-N "${CLIENT_PAIRS[@]}")
SSHD_ALL=(sshd-pty sshd-N nginx-sshd "${SSHD_CLIENTS[@]}")
# Groups of targets that share a set-up: the one burrow process serves
# BURROW_PTY through the pty client's tunnel and BURROW_N through the -N
# client's; H2 needs h2load; CLUSTER runs its own two nodes.
BURROW_PTY=(burrow-http-pty burrow-https burrow-h2 burrow-h2-m10)
BURROW_N=(burrow-http-N burrow-https-N)
BURROW_ONE=("${BURROW_PTY[@]}" "${BURROW_N[@]}" "${BURROW_CLIENTS[@]}")
H2=(burrow-h2 burrow-h2-m10)
CLUSTER=(cluster-owner cluster-via)
DOMAIN=bench.test
MIB=1048576
BIG_BYTES=$((100 * MIB))
SSHD_BIN=${SSHD_BIN:-/usr/sbin/sshd}
START_EPOCH=$(date +%s)
STAMP=$(date -u +%Y%m%d-%H%M%S)

log() { printf '[compare %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
helper() { python3 "$HELPER" "$@"; }

for v in DURATION LAT_DURATION ROUNDS WARMUP; do
    [[ ${!v} =~ ^[0-9]+$ && ${!v} -gt 0 ]] || die "$v must be a positive integer (got '${!v}')"
done

# ---------------------------------------------------------------- targets
declare -A WANT=()
if [[ -n ${ONLY:-} ]]; then
    only=()
    for t in ${ONLY//,/ }; do
        if [[ $t == clients ]]; then only+=("${CLIENTS_ALIAS[@]}"); else only+=("$t"); fi
    done
    for t in "${only[@]}"; do
        found=0
        for a in "${ALL_TARGETS[@]}"; do [[ $a == "$t" ]] && found=1; done
        ((found)) || die "ONLY: unknown target '$t' (known: ${ALL_TARGETS[*]}; alias: clients)"
        WANT[$t]=1
    done
else
    for a in "${DEFAULT_TARGETS[@]}"; do WANT[$a]=1; done
fi
TARGETS=()
for a in "${ALL_TARGETS[@]}"; do [[ -n ${WANT[$a]:-} ]] && TARGETS+=("$a"); done
wanted() { [[ -n ${WANT[$1]:-} ]]; }
wanted_any() { local t; for t in "$@"; do wanted "$t" && return 0; done; return 1; }

# ---------------------------------------------------------------- temp dir, processes, cleanup
TMP=$(mktemp -d "${TMPDIR:-/tmp}/burrow-compare.XXXXXX")
mkdir -p "$TMP/logs" "$TMP/out" "$TMP/www"
RESULTS="$TMP/results.tsv"
: >"$RESULTS"
CLIENT_PIDS=()
SERVER_PIDS=()

cleanup() {
    local rc=$? p alive i
    trap - EXIT INT TERM
    # Clients first (their sshd/burrow sessions end with them), then servers.
    for p in "${CLIENT_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    sleep 0.2
    for p in "${SERVER_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for i in $(seq 1 50); do
        alive=0
        for p in "${CLIENT_PIDS[@]}" "${SERVER_PIDS[@]}"; do
            kill -0 "$p" 2>/dev/null && alive=1
        done
        ((alive)) || break
        sleep 0.1
    done
    for p in "${CLIENT_PIDS[@]}" "${SERVER_PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ $KEEP_TMP == 1 ]]; then
        log "kept $TMP"
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# spawn LOGFILE client|server CMD...: start CMD in the background, stdin from
# /dev/null, stdout+stderr to LOGFILE; its PID lands in SPAWNED.
SPAWNED=
spawn() {
    local logf=$1 kind=$2
    shift 2
    "$@" >"$logf" 2>&1 </dev/null &
    SPAWNED=$!
    if [[ $kind == client ]]; then CLIENT_PIDS+=("$SPAWNED"); else SERVER_PIDS+=("$SPAWNED"); fi
}

# record TARGET METRIC ROUND VALUE
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RESULTS"; }
SKIPPED=()
skip() { # skip TARGET REASON
    local t=$1
    shift
    if wanted "$t"; then
        log "SKIP $t: $*"
        record "$t" skip - "$*"
        SKIPPED+=("$t")
    fi
    unset "WANT[$t]"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # wait_port PORT SECONDS PID
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        port_open "$1" && return 0
        kill -0 "$3" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# wait_200 URL HOST SECONDS: until GET URL (with Host: HOST if given) answers 200.
wait_200() {
    local url=$1 host=$2 secs=$3 i code
    local -a h=()
    [[ -n $host ]] && h=(-H "Host: $host")
    for ((i = 0; i < secs * 5; i++)); do
        code=$(curl -sk -o /dev/null --max-time 2 "${h[@]}" -w '%{http_code}' "$url" || true)
        [[ $code == 200 ]] && return 0
        sleep 0.2
    done
    return 1
}

# ---------------------------------------------------------------- tools
# ensure CMD PACKAGE: CMD on PATH, apt-get installing PACKAGE if we can.
APT_UPDATED=0
ensure() {
    command -v "$1" >/dev/null 2>&1 && return 0
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        log "$1 not found: apt-get install -y $2"
        if ! DEBIAN_FRONTEND=noninteractive apt-get install -y "$2" >&2; then
            if ((APT_UPDATED == 0)); then
                APT_UPDATED=1
                apt-get update >&2 || true
                DEBIAN_FRONTEND=noninteractive apt-get install -y "$2" >&2 || true
            fi
        fi
    fi
    command -v "$1" >/dev/null 2>&1
}

ensure python3 python3 || die "python3 is required"
ensure curl curl || die "curl is required (apt-get install curl)"
ensure wrk wrk || die "wrk is required (apt-get install wrk)"
ensure nginx nginx || die "nginx is required for the origin (apt-get install nginx)"
if wanted_any "${H2[@]}" && ! ensure h2load nghttp2-client; then
    for t in "${H2[@]}"; do
        skip "$t" "h2load not found and could not be installed (apt-get install nghttp2-client)"
    done
fi
if wanted_any "${SSHD_ALL[@]}"; then
    if [[ ! -x $SSHD_BIN ]]; then ensure sshd openssh-server || true; fi
    if [[ ! -x $SSHD_BIN ]] && command -v sshd >/dev/null 2>&1; then SSHD_BIN=$(command -v sshd); fi
    if [[ ! -x $SSHD_BIN ]]; then
        for t in "${SSHD_ALL[@]}"; do
            skip "$t" "OpenSSH sshd not found and could not be installed (apt-get install openssh-server)"
        done
    fi
fi
if wanted_any "${CLUSTER[@]}" && ! ensure redis-server redis-server; then
    for t in "${CLUSTER[@]}"; do skip "$t" "redis-server not found and could not be installed (apt-get install redis-server)"; done
fi
if wanted_any "${SSHD_ALL[@]}" "${BURROW_ONE[@]}" sandhole "${CLUSTER[@]}"; then
    command -v ssh >/dev/null 2>&1 || ensure ssh openssh-client || die "the OpenSSH client (ssh) is required"
    command -v ssh-keygen >/dev/null 2>&1 || die "ssh-keygen is required"
fi
# The privilege separation directory the Debian sshd needs (normally made by
# its service unit).
if wanted_any "${SSHD_ALL[@]}" && [[ ! -d /run/sshd ]]; then
    if [[ $(id -u) == 0 ]]; then
        mkdir -p /run/sshd && chmod 0755 /run/sshd
    fi
fi

# ---------------------------------------------------------------- the other clients
# skip_client CLIENT REASON: skip both of its targets.
skip_client() { skip "sshd-$1" "$2"; skip "burrow-https-$1" "$2"; }
client_wanted() { wanted_any "sshd-$1" "burrow-https-$1"; }
PARAMIKO_PY=/usr/bin/python3
if client_wanted paramiko && ! "$PARAMIKO_PY" -c 'import paramiko' 2>/dev/null; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y python3-paramiko >&2 || true
    fi
    "$PARAMIKO_PY" -c 'import paramiko' 2>/dev/null ||
        skip_client paramiko "$PARAMIKO_PY cannot import paramiko (apt-get install python3-paramiko)"
fi
if client_wanted plink && ! { ensure plink putty-tools && ensure puttygen putty-tools; }; then
    skip_client plink "plink/puttygen not found and could not be installed (apt-get install putty-tools)"
fi
if client_wanted dbclient && ! { ensure dbclient dropbear-bin && ensure dropbearconvert dropbear-bin; }; then
    skip_client dbclient "dbclient/dropbearconvert not found and could not be installed (apt-get install dropbear-bin)"
fi
# asyncssh: ASYNCSSH_PYTHON, or a virtualenv made once in BENCH_CACHE.
if client_wanted asyncssh; then
    if [[ -z ${ASYNCSSH_PYTHON:-} ]]; then
        ASYNCSSH_PYTHON="$BENCH_CACHE/asyncssh-venv/bin/python"
        if ! "$ASYNCSSH_PYTHON" -c 'import asyncssh' 2>/dev/null; then
            log "asyncssh: python3 -m venv $BENCH_CACHE/asyncssh-venv; pip install asyncssh"
            mkdir -p "$BENCH_CACHE"
            { python3 -m venv "$BENCH_CACHE/asyncssh-venv" &&
                timeout 600 "$BENCH_CACHE/asyncssh-venv/bin/pip" install -q asyncssh; } >&2 || true
        fi
    fi
    "$ASYNCSSH_PYTHON" -c 'import asyncssh' 2>/dev/null ||
        skip_client asyncssh "$ASYNCSSH_PYTHON cannot import asyncssh (pip install asyncssh failed?)"
fi
# russh: benches/russh_tunnel.rs, built with the fastrel profile (release
# without LTO) unless RUSSH_TUNNEL_BIN names a build.
if client_wanted russh; then
    if [[ -z ${RUSSH_TUNNEL_BIN:-} ]]; then
        if command -v cargo >/dev/null 2>&1; then
            log "building the russh client: cargo build --profile fastrel --bench russh_tunnel (in $ROOT)"
            RUSSH_TUNNEL_BIN=$(cd "$ROOT" && cargo build --profile fastrel --bench russh_tunnel --message-format json 2>/dev/null |
                python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "russh_tunnel" and m.get("executable"):
        print(m["executable"])' | tail -1 || true)
        fi
    fi
    if [[ -z ${RUSSH_TUNNEL_BIN:-} || ! -x $RUSSH_TUNNEL_BIN ]]; then
        skip_client russh "no russh client binary (cargo build --profile fastrel --bench russh_tunnel failed, or RUSSH_TUNNEL_BIN is not executable)"
    fi
fi

# ---------------------------------------------------------------- burrow binary
HAS_HTTP_MODE=0
if wanted_any "${BURROW_ONE[@]}" "${CLUSTER[@]}"; then
    if [[ -n ${BURROW_BIN:-} ]]; then
        [[ -x $BURROW_BIN ]] || die "BURROW_BIN=$BURROW_BIN is not an executable"
    else
        command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust or pass BURROW_BIN"
        log "building burrow: cargo build --release (in $ROOT)"
        (cd "$ROOT" && cargo build --release >&2) || die "cargo build --release failed"
        BURROW_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/burrow"
        [[ $BURROW_BIN == /* ]] || BURROW_BIN="$ROOT/$BURROW_BIN"
    fi
    if "$BURROW_BIN" --help 2>/dev/null | grep -q -- '--http-mode'; then
        HAS_HTTP_MODE=1
    else
        for t in burrow-http-pty burrow-http-N cluster-owner cluster-via; do
            skip "$t" "this burrow has no --http-mode (plain HTTP only redirects); HTTPS targets still run"
        done
    fi
fi

# ---------------------------------------------------------------- sandhole binary
SANDHOLE_VERSION_REQ='^0.10'
SH_BIN=
if wanted sandhole; then
    if [[ $SANDHOLE == 0 ]]; then
        skip sandhole "SANDHOLE=0"
    elif [[ -n ${SANDHOLE_BIN:-} ]]; then
        [[ -x $SANDHOLE_BIN ]] || die "SANDHOLE_BIN=$SANDHOLE_BIN is not an executable"
        SH_BIN=$SANDHOLE_BIN
    else
        SH_BIN="$BENCH_CACHE/sandhole/bin/sandhole"
        SH_LOG="$BENCH_CACHE/sandhole-build.log"
        SH_FAILED="$BENCH_CACHE/sandhole-build.failed"
        if [[ ! -x $SH_BIN ]]; then
            if [[ -f $SH_FAILED && ${SANDHOLE_REBUILD:-0} != 1 ]]; then
                skip sandhole "an earlier build failed ($SH_LOG); SANDHOLE_REBUILD=1 retries"
                SH_BIN=
            elif ! command -v cargo >/dev/null 2>&1; then
                skip sandhole "cargo not found, cannot build sandhole"
                SH_BIN=
            else
                mkdir -p "$BENCH_CACHE"
                rm -f "$SH_FAILED"
                log "building sandhole $SANDHOLE_VERSION_REQ once into $BENCH_CACHE/sandhole (10-20 min on 2 cores; log: $SH_LOG)"
                if ! timeout "${SANDHOLE_BUILD_TIMEOUT:-3600}" cargo install sandhole --version "$SANDHOLE_VERSION_REQ" \
                    --root "$BENCH_CACHE/sandhole" --locked >"$SH_LOG" 2>&1; then
                    # Its Cargo.lock may pin a crate version the registry no
                    # longer serves; then resolve afresh (same sandhole version).
                    log "sandhole: cargo install --locked failed; retrying without --locked"
                    if ! timeout "${SANDHOLE_BUILD_TIMEOUT:-3600}" cargo install sandhole --version "$SANDHOLE_VERSION_REQ" \
                        --root "$BENCH_CACHE/sandhole" >>"$SH_LOG" 2>&1; then
                        date >"$SH_FAILED"
                        skip sandhole "cargo install sandhole failed (see $SH_LOG)"
                        SH_BIN=
                    fi
                fi
            fi
        fi
    fi
    if [[ -n $SH_BIN ]] && ! "$SH_BIN" --version 2>/dev/null | grep -q ' 0\.10\.'; then
        skip sandhole "$SH_BIN is not sandhole 0.10 ($("$SH_BIN" --version 2>&1 | head -1))"
        SH_BIN=
    fi
fi

# ---------------------------------------------------------------- header
version_of() { "$@" 2>&1 | head -1 || true; }
CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)
MEM_TOTAL=$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)
HEADER="$TMP/header.md"
{
    echo "## burrow compare: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo
    echo "Command: \`$INVOCATION\`"
    echo
    echo "- machine: $(nproc) CPUs ($CPU_MODEL), $MEM_TOTAL, \`$(uname -srm)\`, load average at start $(cut -d' ' -f1-3 /proc/loadavg)"
    if [[ -n ${BURROW_BIN:-} ]]; then
        echo "- burrow: \`$BURROW_BIN\` ($(version_of "$BURROW_BIN" --version); tree $(cd "$ROOT" && git describe --always --dirty 2>/dev/null || echo unknown)); --http-mode proxy: $([[ $HAS_HTTP_MODE == 1 ]] && echo yes || echo 'not supported by this binary')"
    fi
    echo "- OpenSSH: $(version_of ssh -V); server: $(dpkg-query -W -f '${Package} ${Version}' openssh-server 2>/dev/null || echo "$SSHD_BIN")"
    echo "- $(version_of nginx -v); $(version_of wrk --version | sed 's/ Copyright.*//'); $(command -v h2load >/dev/null && version_of h2load --version || echo 'h2load: none'); $(version_of curl --version | cut -d' ' -f1-2)"
    if [[ -n $SH_BIN ]]; then echo "- sandhole: $(version_of "$SH_BIN" --version) (\`$SH_BIN\`)"; fi
    echo "- load: \`wrk -t2 -c64 -d${DURATION}s\` on /1k (1 KiB); p99: \`wrk -t1 -c1 -d${LAT_DURATION}s --latency\`; bulk: one \`curl\` GET of /100m and POST of 100 MiB to /upload; h2: \`h2load -t2 -c64 -m1 -D $DURATION\` (and \`-m10\`)"
    echo "- every ssh client: \`ssh -c chacha20-poly1305@openssh.com\` with a throwaway ed25519 key, one connection per tunnel; ${ROUNDS} round(s), order reversed every other round, ${WARMUP}s warm-up per target"
    if wanted_any "${CLIENT_PAIRS[@]}"; then
        echo "- other clients (their default ciphers): $(for c in "${CLIENT_NAMES[@]}"; do
            client_wanted "$c" || continue
            case $c in
            russh) printf 'russh %s (%s); ' "$(grep -A1 '^name = "russh"$' "$ROOT/Cargo.lock" | sed -n 's/version = "\(.*\)"/\1/p')" "${RUSSH_TUNNEL_BIN:-}" ;;
            asyncssh) printf 'asyncssh %s; ' "$("$ASYNCSSH_PYTHON" -c 'import asyncssh; print(asyncssh.__version__)' 2>/dev/null)" ;;
            paramiko) printf 'paramiko %s; ' "$("$PARAMIKO_PY" -c 'import paramiko; print(paramiko.__version__)' 2>/dev/null)" ;;
            plink) printf '%s; ' "$(plink -V 2>&1 | head -1)" ;;
            dbclient) printf '%s; ' "$(dpkg-query -W -f '${Package} ${Version}' dropbear-bin 2>/dev/null || echo dbclient)" ;;
            esac
        done)"
    fi
    if [[ $BULK_ONLY == 1 ]]; then
        echo "- BULK_ONLY=1: only the 100 MiB transfers (one curl each, HTTP/1.1); the warm-up is one 100 MiB download per target"
    fi
    echo
} >"$HEADER"
cat "$HEADER"

# ---------------------------------------------------------------- common files
head -c 1024 /dev/urandom >"$TMP/www/1k"
head -c "$BIG_BYTES" /dev/urandom >"$TMP/www/100m"
ssh-keygen -q -t ed25519 -N '' -C burrow-bench-client -f "$TMP/client_key"
SSH_OPTS=(-F /dev/null -c chacha20-poly1305@openssh.com -i "$TMP/client_key"
    -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=no
    -o UserKnownHostsFile=/dev/null -o ExitOnForwardFailure=yes
    -o ServerAliveInterval=0 -o ConnectTimeout=10)
ME=$(id -un)

# The client key in PuTTY's and Dropbear's formats, for their logins to sshd.
if wanted sshd-plink; then
    puttygen "$TMP/client_key" -O private -o "$TMP/client_key.ppk" >/dev/null 2>&1 ||
        skip sshd-plink "puttygen could not convert the client key"
fi
if wanted sshd-dbclient; then
    dropbearconvert openssh dropbear "$TMP/client_key" "$TMP/client_key.dropbear" >/dev/null 2>&1 ||
        skip sshd-dbclient "dropbearconvert could not convert the client key"
fi

# client_cmd CLIENT sshd|burrow SSH_PORT REMOTE_PORT HOST_KEY_FILE: sets CMD
# to the command line of CLIENT with a remote forward to the origin: to
# sshd on 127.0.0.1:REMOTE_PORT as the current user with the client key (no
# session, like -N); to burrow as random@ on port 80 (keyless, with the
# session where burrow prints the URL). HOST_KEY_FILE: the server's private
# host key, for the clients that check it. Every client keeps its own HOME.
CMD=()
client_cmd() {
    local c=$1 server=$2 port=$3 rport=$4 hostkey=$5 fp pub home="$TMP/home/$1-$2"
    mkdir -p "$home"
    fp=$(ssh-keygen -lf "$hostkey" | cut -d' ' -f2)
    pub=$(ssh-keygen -y -f "$hostkey" | cut -d' ' -f1-2)
    local -a py=(--port "$port" --host-key "$pub" --origin-port "$P_ORIGIN" --hold)
    if [[ $server == sshd ]]; then
        py+=(--user "$ME" --key "$TMP/client_key" --remote-host 127.0.0.1 --remote-port "$rport")
    else
        py+=(--user random)
    fi
    case $c in
    russh)
        CMD=("$RUSSH_TUNNEL_BIN" --port "$port" --origin-port "$P_ORIGIN")
        if [[ $server == sshd ]]; then
            CMD+=(--user "$ME" --key "$TMP/client_key" --remote-host 127.0.0.1 --remote-port "$rport")
        else
            CMD+=(--user random --remote-port 80 --session)
        fi
        ;;
    asyncssh) CMD=(env PYTHONWARNINGS=ignore "$ASYNCSSH_PYTHON" -u "$ROOT/tests/scripts/asyncssh_tunnel.py" "${py[@]}") ;;
    paramiko) CMD=(env PYTHONWARNINGS=ignore "$PARAMIKO_PY" -u "$ROOT/tests/scripts/paramiko_tunnel.py" "${py[@]}") ;;
    plink)
        CMD=(env HOME="$home" plink -batch -noagent -hostkey "$fp" -P "$port")
        if [[ $server == sshd ]]; then
            CMD+=(-N -i "$TMP/client_key.ppk" -R "127.0.0.1:$rport:127.0.0.1:$P_ORIGIN" "$ME@127.0.0.1")
        else
            CMD+=(-R "80:127.0.0.1:$P_ORIGIN" random@127.0.0.1)
        fi
        ;;
    dbclient)
        CMD=(env HOME="$home" dbclient -T -y -p "$port")
        if [[ $server == sshd ]]; then
            CMD+=(-N -i "$TMP/client_key.dropbear" -R "127.0.0.1:$rport:127.0.0.1:$P_ORIGIN" "$ME@127.0.0.1")
        else
            CMD+=(-R "80:127.0.0.1:$P_ORIGIN" random@127.0.0.1)
        fi
        ;;
    esac
}
# nginx started as root would run its workers as nobody, who cannot read the
# 0700 temp dir: keep them as the current user.
NGINX_USER=""
[[ $(id -u) == 0 ]] && NGINX_USER="user $ME $(id -gn);"

# Free ports, distinct from each other: origin, front nginx, sshd, the two
# sshd remote ports, sandhole ssh/http/https, redis, cluster links, spares,
# and the sshd remote ports of the other clients.
read -r P_ORIGIN P_FRONT P_SSHD P_RPTY P_RN P_SH_SSH P_SH_HTTP P_SH_HTTPS P_REDIS P_LINK1 P_LINK2 _ _ \
    P_R_RUSSH P_R_ASYNCSSH P_R_PARAMIKO P_R_PLINK P_R_DBCLIENT < <(helper ports 18)
# the sshd -R port of each other client
declare -A P_R=([russh]=$P_R_RUSSH [asyncssh]=$P_R_ASYNCSSH [paramiko]=$P_R_PARAMIKO
    [plink]=$P_R_PLINK [dbclient]=$P_R_DBCLIENT)

# CLIENT_OF: the tunnel client's PID of each target (its CPU is shown too).
declare -A URL=() HOSTH=() PIDS_OF=() CLIENT_OF=()

# nginx_http_common DIR: the http{} lines both nginx instances share: long
# keep-alive for the load generators, and every temp path inside DIR.
nginx_http_common() {
    cat <<NGINX
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    client_body_temp_path $1/client_body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
NGINX
}

# ---------------------------------------------------------------- origin nginx
mkdir -p "$TMP/origin"
cat >"$TMP/origin/nginx.conf" <<EOF
# origin: /1k, /100m, and /upload which reads the whole body (held in memory)
# before answering 200; upload.log records the request length to verify it.
$NGINX_USER
worker_processes auto;
pid $TMP/origin/nginx.pid;
error_log $TMP/origin/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
$(nginx_http_common "$TMP/origin")
    default_type application/octet-stream;
    log_format upload '\$request_length \$request_time \$status';
    server {
        listen 127.0.0.1:$P_ORIGIN;
        root $TMP/www;
        location = /1k { }
        location = /100m { }
        location = /upload {
            client_max_body_size 200m;
            client_body_buffer_size 128m;
            access_log $TMP/origin/upload.log upload;
            # proxying reads the complete body first (request buffering);
            # the body itself is not passed on.
            proxy_pass http://127.0.0.1:$P_ORIGIN/uploaded;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_method GET;
        }
        location = /uploaded { return 200 "ok\n"; }
    }
}
EOF
spawn "$TMP/logs/origin-nginx.log" server nginx -p "$TMP/origin" -c "$TMP/origin/nginx.conf" -g 'daemon off;'
ORIGIN_PID=$SPAWNED
wait_port "$P_ORIGIN" 10 "$ORIGIN_PID" || die "origin nginx did not start: $(tail -5 "$TMP/logs/origin-nginx.log" "$TMP/origin/error.log" 2>/dev/null)"
URL[origin]="http://127.0.0.1:$P_ORIGIN"
PIDS_OF[origin]=$ORIGIN_PID
wait_200 "${URL[origin]}/1k" "" 10 || die "origin does not serve /1k: $(tail -2 "$TMP/origin/error.log")"
log "origin nginx on 127.0.0.1:$P_ORIGIN"

# ---------------------------------------------------------------- sshd, its clients, front nginx
SSHD_PID=
if wanted_any "${SSHD_ALL[@]}"; then
    mkdir -p "$TMP/sshd"
    ssh-keygen -q -t ed25519 -N '' -C burrow-bench-sshd -f "$TMP/sshd/host_ed25519"
    cat >"$TMP/sshd/sshd_config" <<EOF
ListenAddress 127.0.0.1
HostKey $TMP/sshd/host_ed25519
PidFile $TMP/sshd/sshd.pid
AuthorizedKeysFile $TMP/client_key.pub
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AllowTcpForwarding yes
GatewayPorts no
X11Forwarding no
PermitTTY yes
PrintMotd no
PrintLastLog no
UseDNS no
# chacha20 for the OpenSSH clients (they ask for it with -c); AES for the
# clients without it (paramiko): each client gets what it would prefer.
Ciphers chacha20-poly1305@openssh.com,aes128-gcm@openssh.com,aes256-gcm@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr
ClientAliveInterval 0
EOF
    if ! sshd_err=$("$SSHD_BIN" -t -f "$TMP/sshd/sshd_config" -p "$P_SSHD" 2>&1); then
        for t in "${SSHD_ALL[@]}"; do skip "$t" "sshd rejects the throwaway config: $sshd_err"; done
    else
        spawn "$TMP/logs/sshd.log" server "$SSHD_BIN" -D -e -f "$TMP/sshd/sshd_config" -p "$P_SSHD"
        SSHD_PID=$SPAWNED
        if ! wait_port "$P_SSHD" 10 "$SSHD_PID"; then
            for t in "${SSHD_ALL[@]}"; do skip "$t" "sshd did not start: $(tail -3 "$TMP/logs/sshd.log")"; done
            SSHD_PID=
        fi
    fi
    if [[ -n $SSHD_PID ]]; then
        log "sshd $("$SSHD_BIN" -V 2>&1 | head -1 || true) on 127.0.0.1:$P_SSHD"
        if wanted_any sshd-pty nginx-sshd; then
            spawn "$TMP/logs/sshd-client-pty.log" client ssh "${SSH_OPTS[@]}" -tt -p "$P_SSHD" \
                -R "127.0.0.1:$P_RPTY:127.0.0.1:$P_ORIGIN" "$ME@127.0.0.1" sleep 1000000
            CLIENT_OF[sshd-pty]=$SPAWNED
            if wait_200 "http://127.0.0.1:$P_RPTY/1k" "" 20; then
                URL[sshd-pty]="http://127.0.0.1:$P_RPTY"
            else
                for t in sshd-pty nginx-sshd; do skip "$t" "the pty ssh -R client did not get a working forward: $(tail -3 "$TMP/logs/sshd-client-pty.log")"; done
            fi
        fi
        if wanted sshd-N; then
            spawn "$TMP/logs/sshd-client-N.log" client ssh "${SSH_OPTS[@]}" -N -p "$P_SSHD" \
                -R "127.0.0.1:$P_RN:127.0.0.1:$P_ORIGIN" "$ME@127.0.0.1"
            CLIENT_OF[sshd-N]=$SPAWNED
            if wait_200 "http://127.0.0.1:$P_RN/1k" "" 20; then
                URL[sshd-N]="http://127.0.0.1:$P_RN"
            else
                skip sshd-N "the -N ssh -R client did not get a working forward: $(tail -3 "$TMP/logs/sshd-client-N.log")"
            fi
        fi
        PIDS_OF[sshd-pty]="sshd"
        PIDS_OF[sshd-N]="sshd"
        for c in "${CLIENT_NAMES[@]}"; do
            t=sshd-$c
            wanted "$t" || continue
            client_cmd "$c" sshd "$P_SSHD" "${P_R[$c]}" "$TMP/sshd/host_ed25519"
            spawn "$TMP/logs/$t.log" client "${CMD[@]}"
            CLIENT_OF[$t]=$SPAWNED
            if wait_200 "http://127.0.0.1:${P_R[$c]}/1k" "" 30; then
                URL[$t]="http://127.0.0.1:${P_R[$c]}"
                PIDS_OF[$t]="sshd"
                log "$c → sshd -R 127.0.0.1:${P_R[$c]}"
            else
                skip "$t" "$c did not get a working forward from sshd: $(tail -3 "$TMP/logs/$t.log" | tr -d '\r')"
            fi
        done
    fi
    if wanted nginx-sshd; then
        mkdir -p "$TMP/front"
        cat >"$TMP/front/nginx.conf" <<EOF
# nginx → sshd -R, configured to be fair to nginx: keep-alive to the
# upstream, HTTP/1.1, no request buffering, no spooling to disk.
$NGINX_USER
worker_processes auto;
pid $TMP/front/nginx.pid;
error_log $TMP/front/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    tcp_nodelay on;
$(nginx_http_common "$TMP/front")
    upstream sshd_tunnel {
        server 127.0.0.1:$P_RPTY;
        keepalive 128;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:$P_FRONT;
        client_max_body_size 0;
        location / {
            proxy_pass http://sshd_tunnel;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_request_buffering off;
            proxy_max_temp_file_size 0;
        }
    }
}
EOF
        spawn "$TMP/logs/front-nginx.log" server nginx -p "$TMP/front" -c "$TMP/front/nginx.conf" -g 'daemon off;'
        FRONT_PID=$SPAWNED
        if wait_port "$P_FRONT" 10 "$FRONT_PID" && wait_200 "http://127.0.0.1:$P_FRONT/1k" "" 10; then
            URL[nginx-sshd]="http://127.0.0.1:$P_FRONT"
            PIDS_OF[nginx-sshd]="$FRONT_PID sshd"
            log "front nginx on 127.0.0.1:$P_FRONT → sshd -R port $P_RPTY"
        else
            skip nginx-sshd "the front nginx did not start: $(tail -3 "$TMP/front/error.log" 2>/dev/null)"
        fi
    fi
fi

# ---------------------------------------------------------------- burrow and its clients
BURROW_PID=
B_STATS=
# burrow_client LOGNAME pty|N: start a random@ client (in this shell, so that
# cleanup knows its PID) and set B_HOST to its tunnel's host name.
B_HOST=
burrow_client() {
    local name=$1 mode=$2
    local -a extra=(-N)
    [[ $mode == pty ]] && extra=(-tt)
    burrow_spawn "$name" ssh "${SSH_OPTS[@]}" "${extra[@]}" -p "$B_SSH" \
        -R "80:127.0.0.1:$P_ORIGIN" "random@127.0.0.1"
}
# burrow_spawn LOGNAME CMD...: start a client and set B_HOST to the host name
# of the URL it prints.
burrow_spawn() {
    local name=$1 i
    shift
    B_HOST=
    spawn "$TMP/logs/$name.log" client "$@"
    for ((i = 0; i < 300; i++)); do
        B_HOST=$(grep -aoE "https://[a-z0-9-]+\.$DOMAIN" "$TMP/logs/$name.log" 2>/dev/null | head -1 | sed 's#https://##' || true)
        [[ -n $B_HOST ]] && return 0
        kill -0 "$SPAWNED" 2>/dev/null || break
        sleep 0.1
    done
    return 1
}
if wanted_any "${BURROW_ONE[@]}"; then
    mkdir -p "$TMP/burrow"
    B_ARGS=(--domain "$DOMAIN" --ssh-addr 127.0.0.1:0 --http-addr 127.0.0.1:0
        --https-addr 127.0.0.1:0 --stats-addr 127.0.0.1:0
        --host-key "$TMP/burrow/host_key" --state-dir "$TMP/burrow/state" --no-browser-warning
        --visitor-rate 1000000/s --visitor-burst 1000000 --tunnel-rate 1000000/s --tunnel-burst 1000000
        --max-inflight-per-visitor 100000 --max-inflight-per-tunnel 100000
        --max-body-size 1GiB --max-conns-per-minute 1000)
    [[ $HAS_HTTP_MODE == 1 ]] && B_ARGS+=(--http-mode proxy)
    # every client tunnel comes from 127.0.0.1 (the default allows 3 per IP)
    if "$BURROW_BIN" --help 2>/dev/null | grep -q -- '--max-tunnels-per-ip'; then
        B_ARGS+=(--max-tunnels-per-ip 0)
    fi
    # shellcheck disable=SC2206 # word splitting of the extra flags is wanted
    B_ARGS+=(${BURROW_ARGS:-})
    # burrow's default log level (no per-request lines), whatever the caller's RUST_LOG.
    spawn "$TMP/logs/burrow.log" server env RUST_LOG=info,rustls=error "$BURROW_BIN" "${B_ARGS[@]}"
    BURROW_PID=$SPAWNED
    ready=
    for ((i = 0; i < 300; i++)); do
        ready=$(grep -a -m1 '^burrow ready:' "$TMP/logs/burrow.log" || true)
        [[ -n $ready ]] && break
        kill -0 "$BURROW_PID" 2>/dev/null || break
        sleep 0.1
    done
    [[ -n $ready ]] || die "burrow did not start: $(tail -5 "$TMP/logs/burrow.log")"
    B_SSH=$(sed -E 's/.* ssh=127\.0\.0\.1:([0-9]+).*/\1/' <<<"$ready")
    B_HTTP=$(sed -E 's/.* http=127\.0\.0\.1:([0-9]+).*/\1/' <<<"$ready")
    B_HTTPS=$(sed -E 's/.* https=127\.0\.0\.1:([0-9]+).*/\1/' <<<"$ready")
    B_STATS=$(sed -E 's/.* stats=127\.0\.0\.1:([0-9]+).*/\1/' <<<"$ready")
    log "$ready"
    if wanted_any "${BURROW_PTY[@]}"; then
        if burrow_client burrow-client-pty pty && B_HOST_PTY=$B_HOST && CLIENT_OF[burrow-https]=$SPAWNED &&
            wait_200 "https://127.0.0.1:$B_HTTPS/1k" "$B_HOST_PTY" 20; then
            log "burrow pty tunnel: $B_HOST_PTY"
            URL[burrow-http-pty]="http://127.0.0.1:$B_HTTP"
            HOSTH[burrow-http-pty]=$B_HOST_PTY
            URL[burrow-https]="https://127.0.0.1:$B_HTTPS"
            HOSTH[burrow-https]=$B_HOST_PTY
            for t in "${H2[@]}"; do
                URL[$t]="https://127.0.0.1:$B_HTTPS"
                HOSTH[$t]=$B_HOST_PTY
            done
            if wanted burrow-http-pty && ! wait_200 "${URL[burrow-http-pty]}/1k" "$B_HOST_PTY" 10; then
                skip burrow-http-pty "plain HTTP with --http-mode proxy does not answer 200"
            fi
        else
            for t in "${BURROW_PTY[@]}"; do
                skip "$t" "the pty client got no working tunnel: $(tail -3 "$TMP/logs/burrow-client-pty.log" | tr -d '\r')"
            done
        fi
    fi
    if wanted_any "${BURROW_N[@]}"; then
        if burrow_client burrow-client-N N && B_HOST_N=$B_HOST && CLIENT_OF[burrow-https-N]=$SPAWNED &&
            wait_200 "https://127.0.0.1:$B_HTTPS/1k" "$B_HOST_N" 20; then
            log "burrow -N tunnel: $B_HOST_N"
            URL[burrow-http-N]="http://127.0.0.1:$B_HTTP"
            HOSTH[burrow-http-N]=$B_HOST_N
            URL[burrow-https-N]="https://127.0.0.1:$B_HTTPS"
            HOSTH[burrow-https-N]=$B_HOST_N
        else
            for t in "${BURROW_N[@]}"; do
                skip "$t" "the -N client got no working tunnel: $(tail -3 "$TMP/logs/burrow-client-N.log")"
            done
        fi
    fi
    for c in "${CLIENT_NAMES[@]}"; do
        t=burrow-https-$c
        wanted "$t" || continue
        client_cmd "$c" burrow "$B_SSH" 80 "$TMP/burrow/host_key"
        if burrow_spawn "$t" "${CMD[@]}" && CLIENT_OF[$t]=$SPAWNED &&
            wait_200 "https://127.0.0.1:$B_HTTPS/1k" "$B_HOST" 20; then
            log "burrow $c tunnel: $B_HOST"
            URL[$t]="https://127.0.0.1:$B_HTTPS"
            HOSTH[$t]=$B_HOST
        else
            skip "$t" "$c got no working tunnel: $(tail -3 "$TMP/logs/$t.log" | tr -d '\r')"
        fi
    done
    for t in "${BURROW_ONE[@]}"; do PIDS_OF[$t]=$BURROW_PID; done
    CLIENT_OF[burrow-http-pty]=${CLIENT_OF[burrow-https]:-}
    for t in "${H2[@]}"; do CLIENT_OF[$t]=${CLIENT_OF[burrow-https]:-}; done
    CLIENT_OF[burrow-http-N]=${CLIENT_OF[burrow-https-N]:-}
fi

# ---------------------------------------------------------------- a two-node cluster and its client
# burrow_node N IP: starts node N of the cluster on IP (every listener on a
# port of its own), sets NODE_PID and NODE_READY.
NODE_PID=
NODE_READY=
burrow_node() {
    local n=$1 ip=$2 link=$3 i
    spawn "$TMP/logs/node$n.log" server env RUST_LOG=info,rustls=error "$BURROW_BIN" "${B_COMMON[@]}" \
        --ssh-addr "$ip:0" --http-addr "$ip:0" --https-addr "$ip:0" --stats-addr "$ip:0" \
        --state-dir "$TMP/cluster/state$n" --cluster-redis "redis://127.0.0.1:$P_REDIS" \
        --node-id "node-$n" --cluster-listen "$ip:$link" --cluster-secret "$TMP/cluster/secret"
    NODE_PID=$SPAWNED
    NODE_READY=
    for ((i = 0; i < 300; i++)); do
        NODE_READY=$(grep -a -m1 '^burrow ready:' "$TMP/logs/node$n.log" || true)
        [[ -n $NODE_READY ]] && return 0
        kill -0 "$NODE_PID" 2>/dev/null || break
        sleep 0.1
    done
    return 1
}
if wanted_any "${CLUSTER[@]}"; then
    mkdir -p "$TMP/cluster"
    B_COMMON=(--domain "$DOMAIN" --host-key "$TMP/cluster/host_key" --no-browser-warning
        --visitor-rate 1000000/s --visitor-burst 1000000 --tunnel-rate 1000000/s --tunnel-burst 1000000
        --max-inflight-per-visitor 100000 --max-inflight-per-tunnel 100000
        --max-body-size 1GiB --max-conns-per-minute 1000 --http-mode proxy)
    # shellcheck disable=SC2206 # word splitting of the extra flags is wanted
    B_COMMON+=(${BURROW_ARGS:-})
    spawn "$TMP/logs/redis.log" server redis-server --port "$P_REDIS" --bind 127.0.0.1 --save "" --appendonly no
    REDIS_PID=$SPAWNED
    "$BURROW_BIN" cluster init "$TMP/cluster/secret" >/dev/null
    if ! wait_port "$P_REDIS" 10 "$REDIS_PID"; then
        for t in "${CLUSTER[@]}"; do skip "$t" "redis-server did not start: $(tail -3 "$TMP/logs/redis.log")"; done
    elif ! burrow_node 1 127.0.0.1 "$P_LINK1"; then
        for t in "${CLUSTER[@]}"; do skip "$t" "node 1 did not start: $(tail -3 "$TMP/logs/node1.log")"; done
    else
        N1_PID=$NODE_PID
        N1_SSH=$(sed -E 's/.* ssh=127\.0\.0\.1:([0-9]+).*/\1/' <<<"$NODE_READY")
        N1_HTTP=$(sed -E 's/.* http=127\.0\.0\.1:([0-9]+).*/\1/' <<<"$NODE_READY")
        if ! burrow_node 2 127.0.0.2 "$P_LINK2"; then
            for t in "${CLUSTER[@]}"; do skip "$t" "node 2 did not start: $(tail -3 "$TMP/logs/node2.log")"; done
        else
            N2_PID=$NODE_PID
            N2_HTTP=$(sed -E 's/.* http=127\.0\.0\.2:([0-9]+).*/\1/' <<<"$NODE_READY")
            spawn "$TMP/logs/cluster-client.log" client ssh "${SSH_OPTS[@]}" -tt -p "$N1_SSH" \
                -R "80:127.0.0.1:$P_ORIGIN" "random@127.0.0.1"
            C_HOST=
            for ((i = 0; i < 150; i++)); do
                C_HOST=$(grep -aoE "https://[a-z0-9-]+\.$DOMAIN" "$TMP/logs/cluster-client.log" | head -1 | sed 's#https://##' || true)
                [[ -n $C_HOST ]] && break
                sleep 0.1
            done
            if [[ -n $C_HOST ]] && wait_200 "http://127.0.0.1:$N1_HTTP/1k" "$C_HOST" 20 &&
                wait_200 "http://127.0.0.2:$N2_HTTP/1k" "$C_HOST" 20; then
                log "cluster: node 1 holds $C_HOST; node 2 forwards"
                URL[cluster-owner]="http://127.0.0.1:$N1_HTTP"
                HOSTH[cluster-owner]=$C_HOST
                PIDS_OF[cluster-owner]=$N1_PID
                URL[cluster-via]="http://127.0.0.2:$N2_HTTP"
                HOSTH[cluster-via]=$C_HOST
                PIDS_OF[cluster-via]="$N1_PID $N2_PID"
            else
                for t in "${CLUSTER[@]}"; do
                    skip "$t" "no working tunnel through both nodes: $(tail -3 "$TMP/logs/cluster-client.log" | tr -d '\r')"
                done
            fi
        fi
    fi
fi

# ---------------------------------------------------------------- sandhole and its client
SH_PID=
if wanted sandhole && [[ -n $SH_BIN ]]; then
    mkdir -p "$TMP/sandhole/user_keys" "$TMP/sandhole/admin_keys" "$TMP/sandhole/certs" "$TMP/sandhole/acme"
    cp "$TMP/client_key.pub" "$TMP/sandhole/user_keys/bench.pub"
    # HTTP only (no certificates here). Its per-request log lines (to the ssh
    # client, and at info level to its own log) are off, as burrow writes
    # none either; the per-IP connection cap is above wrk's 64.
    spawn "$TMP/logs/sandhole.log" server env RUST_LOG="${SANDHOLE_LOG:-warn}" "$SH_BIN" --domain "$DOMAIN" --listen-address 127.0.0.1 \
        --ssh-port "$P_SH_SSH" --http-port "$P_SH_HTTP" --https-port "$P_SH_HTTPS" \
        --user-keys-directory "$TMP/sandhole/user_keys" --admin-keys-directory "$TMP/sandhole/admin_keys" \
        --certificates-directory "$TMP/sandhole/certs" --acme-cache-directory "$TMP/sandhole/acme" \
        --private-key-file "$TMP/sandhole/ssh_key" --disable-https --disable-http-logs \
        --max-simultaneous-connections-per-ip 1024
    SH_PID=$SPAWNED
    if ! wait_port "$P_SH_SSH" 30 "$SH_PID"; then
        skip sandhole "sandhole did not start: $(tail -3 "$TMP/logs/sandhole.log")"
    else
        SH_HOST=
        for attempt in 1 2 3; do
            spawn "$TMP/logs/sandhole-client-$attempt.log" client ssh "${SSH_OPTS[@]}" -tt -p "$P_SH_SSH" \
                -R "80:127.0.0.1:$P_ORIGIN" "$ME@127.0.0.1"
            SH_CLIENT=$SPAWNED
            for ((i = 0; i < 100; i++)); do
                SH_HOST=$(sed 's/\x1b\[[0-9;]*m//g' "$TMP/logs/sandhole-client-$attempt.log" |
                    grep -aoE "http://[a-z0-9-]+\.$DOMAIN" | head -1 | sed 's#http://##' || true)
                [[ -n $SH_HOST ]] && break
                kill -0 "$SH_CLIENT" 2>/dev/null || break
                sleep 0.1
            done
            [[ -n $SH_HOST ]] && break
            # The user key directory may not have been read yet: try again.
            kill "$SH_CLIENT" 2>/dev/null || true
            sleep 2
        done
        if [[ -n $SH_HOST ]] && wait_200 "http://127.0.0.1:$P_SH_HTTP/1k" "$SH_HOST" 20; then
            log "sandhole on ssh 127.0.0.1:$P_SH_SSH http 127.0.0.1:$P_SH_HTTP, tunnel $SH_HOST"
            CLIENT_OF[sandhole]=$SH_CLIENT
            URL[sandhole]="http://127.0.0.1:$P_SH_HTTP"
            HOSTH[sandhole]=$SH_HOST
            PIDS_OF[sandhole]=$SH_PID
        else
            skip sandhole "no working sandhole tunnel: $(tail -3 "$TMP/logs/sandhole.log" | sed 's/\x1b\[[0-9;]*m//g')"
        fi
    fi
fi

# Whatever is still wanted has a URL; anything else was skipped above.
RUN=()
for t in "${TARGETS[@]}"; do
    if wanted "$t"; then
        [[ -n ${URL[$t]:-} ]] || { skip "$t" "not set up"; continue; }
        RUN+=("$t")
    fi
done
((${#RUN[@]} > 0)) || die "nothing to measure"

# ---------------------------------------------------------------- measuring
# server_pids TARGET: the server processes whose CPU and memory count.
server_pids() {
    local p out=""
    for p in ${PIDS_OF[$1]}; do
        if [[ $p == sshd ]]; then p=$SSHD_PID; fi
        out+=" $(helper tree "$p")"
    done
    echo "$out"
}
is_tls() { [[ ${URL[$1]} == https://* ]]; }
is_h2() { [[ $1 == burrow-h2* ]]; }
# h2_streams TARGET: h2load's -m, the streams one connection keeps open.
h2_streams() { if [[ $1 == burrow-h2-m10 ]]; then echo 10; else echo 1; fi; }

upload_lines() { if [[ -f $TMP/origin/upload.log ]]; then wc -l <"$TMP/origin/upload.log"; else echo 0; fi; }

measure() { # measure TARGET ROUND
    local t=$1 r=$2 base=${URL[$1]} host=${HOSTH[$1]:-}
    local -a h=() a=() c=(-s -o /dev/null --max-time 600)
    [[ -n $host ]] && h=(-H "Host: $host") && a=(-H ":authority: $host")
    if is_tls "$t"; then
        c+=(-k)
        if is_h2 "$t"; then c+=(--http2); else c+=(--http1.1); fi
    fi
    local out="$TMP/out/$t.r$r"
    local pids c0 c1 tck rps reqs p99 errs rss hwm summary=""

    pids=$(server_pids "$t")
    if [[ $BULK_ONLY != 1 ]]; then
    # throughput and CPU per request
    # shellcheck disable=SC2086
    read -r c0 tck < <(helper cpu $pids)
    local -a perfs=()
    if [[ -n ${PERF_DIR:-} ]]; then
        local p
        mkdir -p "$PERF_DIR"
        for p in ${PIDS_OF[$t]}; do
            [[ $p == sshd ]] && p=$SSHD_PID
            perf record -q -F "${PERF_FREQ:-499}" -g -p "$p" -o "$PERF_DIR/$t.r$r.$p.data" \
                -- sleep "$DURATION" >"$PERF_DIR/$t.r$r.$p.log" 2>&1 &
            perfs+=($!)
        done
    fi
    if is_h2 "$t"; then
        h2load -t2 -c64 -m"$(h2_streams "$t")" -D "$DURATION" "${a[@]}" "$base/1k" >"$out.load" 2>&1 || true
        # shellcheck disable=SC2086
        read -r c1 _ < <(helper cpu $pids)
        read -r rps reqs _ errs < <(helper h2load "$out.load")
    else
        wrk -t2 -c64 -d"${DURATION}s" "${h[@]}" "$base/1k" >"$out.load" 2>&1 || true
        # shellcheck disable=SC2086
        read -r c1 _ < <(helper cpu $pids)
        read -r rps reqs _ errs < <(helper wrk "$out.load")
    fi
    ((${#perfs[@]} == 0)) || wait "${perfs[@]}" || true
    # shellcheck disable=SC2086
    read -r rss hwm < <(helper mem $pids)
    record "$t" rps "$r" "$rps"
    record "$t" errors "$r" "$errs"
    record "$t" cpu_us "$r" "$(awk -v a="$c0" -v b="$c1" -v k="$tck" -v n="$reqs" \
        'BEGIN { if (n > 0) printf "%.3f", (b - a) / k * 1e6 / n; else print "nan" }')"
    record "$t" rss_mib "$r" "$(awk -v x="$rss" 'BEGIN { printf "%.2f", x / 1024 }')"
    record "$t" hwm_mib "$r" "$(awk -v x="$hwm" 'BEGIN { printf "%.2f", x / 1024 }')"
    [[ $errs == 0 ]] || log "  $t: $errs errors in the throughput run (see below)"
    summary="$rps req/s"

    # p99 with one connection (wrk only)
    if ! is_h2 "$t"; then
        wrk -t1 -c1 -d"${LAT_DURATION}s" --latency "${h[@]}" "$base/1k" >"$out.lat" 2>&1 || true
        read -r _ _ p99 errs < <(helper wrk "$out.lat")
        record "$t" p99_ms "$r" "$p99"
        record "$t" errors "$r" "$errs"
        summary+=", p99 $p99 ms"
    fi
    fi # BULK_ONLY

    # CPU seconds of the server and of the tunnel client over each transfer
    local cpids="" s0 s1 k0 k1
    [[ -n ${CLIENT_OF[$t]:-} ]] && cpids=$(helper tree "${CLIENT_OF[$t]}")

    # 100 MiB download
    local res code size speed
    # shellcheck disable=SC2086
    read -r s0 tck < <(helper cpu $pids)
    # shellcheck disable=SC2086
    read -r k0 _ < <(helper cpu $cpids)
    res=$(curl "${c[@]}" "${h[@]}" -w '%{http_code} %{size_download} %{speed_download}' "$base/100m" || true)
    # shellcheck disable=SC2086
    read -r s1 _ < <(helper cpu $pids)
    # shellcheck disable=SC2086
    read -r k1 _ < <(helper cpu $cpids)
    record "$t" dl_srv_cpu_s "$r" "$(awk -v a="$s0" -v b="$s1" -v k="$tck" 'BEGIN { printf "%.2f", (b - a) / k }')"
    [[ -n $cpids ]] && record "$t" dl_cli_cpu_s "$r" "$(awk -v a="$k0" -v b="$k1" -v k="$tck" 'BEGIN { printf "%.2f", (b - a) / k }')"
    read -r code size speed <<<"$res"
    if [[ $code == 200 && $size == "$BIG_BYTES" ]]; then
        speed=$(awk -v s="$speed" -v m="$MIB" 'BEGIN { printf "%.1f", s / m }')
        record "$t" dl_mibs "$r" "$speed"
        summary+="${summary:+, }down $speed MiB/s"
    else
        log "  $t: 100 MiB download failed: HTTP ${code:-none}, ${size:-0} bytes"
        record "$t" errors "$r" 1
    fi

    # 100 MiB upload; the origin's log must show the whole body was read
    local before after logged
    before=$(upload_lines)
    # shellcheck disable=SC2086
    read -r s0 tck < <(helper cpu $pids)
    # shellcheck disable=SC2086
    read -r k0 _ < <(helper cpu $cpids)
    res=$(curl "${c[@]}" "${h[@]}" -H 'Expect:' -H 'Content-Type: application/octet-stream' \
        --data-binary "@$TMP/www/100m" -w '%{http_code} %{size_upload} %{speed_upload}' "$base/upload" || true)
    # shellcheck disable=SC2086
    read -r s1 _ < <(helper cpu $pids)
    # shellcheck disable=SC2086
    read -r k1 _ < <(helper cpu $cpids)
    record "$t" ul_srv_cpu_s "$r" "$(awk -v a="$s0" -v b="$s1" -v k="$tck" 'BEGIN { printf "%.2f", (b - a) / k }')"
    [[ -n $cpids ]] && record "$t" ul_cli_cpu_s "$r" "$(awk -v a="$k0" -v b="$k1" -v k="$tck" 'BEGIN { printf "%.2f", (b - a) / k }')"
    read -r code size speed <<<"$res"
    sleep 0.1
    after=$(upload_lines)
    logged=0
    ((after > before)) && logged=$(tail -1 "$TMP/origin/upload.log" | cut -d' ' -f1)
    if [[ $code == 200 && $size == "$BIG_BYTES" ]] && ((logged >= BIG_BYTES)); then
        speed=$(awk -v s="$speed" -v m="$MIB" 'BEGIN { printf "%.1f", s / m }')
        record "$t" ul_mibs "$r" "$speed"
        summary+=", up $speed MiB/s"
    else
        log "  $t: 100 MiB upload failed: HTTP ${code:-none}, ${size:-0} bytes sent, origin read ${logged} bytes"
        record "$t" errors "$r" 1
    fi
    log "  $t round $r: $summary (load $(cut -d' ' -f1 /proc/loadavg))"
    record "$t" load1 "$r" "$(cut -d' ' -f1 /proc/loadavg)"
}

warm() { # warm TARGET
    local t=$1 host=${HOSTH[$1]:-}
    local -a h=() a=()
    [[ -n $host ]] && h=(-H "Host: $host") && a=(-H ":authority: $host")
    if [[ $BULK_ONLY == 1 ]]; then
        # one 100 MiB download: the tunnel, its windows and buffers in use once
        curl -sk -o /dev/null --max-time 120 "${h[@]}" "${URL[$t]}/100m" || true
    elif is_h2 "$t"; then
        h2load -t1 -c8 -m"$(h2_streams "$t")" -D "$WARMUP" "${a[@]}" "${URL[$t]}/1k" >/dev/null 2>&1 || true
    else
        wrk -t1 -c8 -d"${WARMUP}s" "${h[@]}" "${URL[$t]}/1k" >/dev/null 2>&1 || true
    fi
}

log "targets: ${RUN[*]}"
for t in "${RUN[@]}"; do
    log "warm-up $t"
    warm "$t"
done
for ((r = 1; r <= ROUNDS; r++)); do
    order=("${RUN[@]}")
    if ((r % 2 == 0)); then
        order=()
        for ((i = ${#RUN[@]} - 1; i >= 0; i--)); do order+=("${RUN[$i]}"); done
    fi
    log "round $r/$ROUNDS: ${order[*]}"
    for t in "${order[@]}"; do measure "$t" "$r"; done
done

# ---------------------------------------------------------------- report
META="$TMP/meta.tsv"
printf 'rounds\t%s\ntargets\t%s\nbulk_only\t%s\n' "$ROUNDS" "${TARGETS[*]}" "$BULK_ONLY" >"$META"
REPORT="$TMP/report.md"
{
    cat "$HEADER"
    helper report "$RESULTS" "$META"
    if [[ -n $BURROW_PID ]]; then
        echo "### burrow"
        echo
        echo "- stats at the end: \`$(curl -s --max-time 2 "http://127.0.0.1:$B_STATS/" || echo unavailable)\`"
        read -r rss hwm < <(helper mem "$BURROW_PID")
        echo "- memory at the end: VmRSS $(awk -v x="$rss" 'BEGIN { printf "%.1f", x / 1024 }') MiB, VmHWM (peak over the whole run) $(awk -v x="$hwm" 'BEGIN { printf "%.1f", x / 1024 }') MiB"
        nwarn=$(grep -caE ' (WARN|ERROR) ' "$TMP/logs/burrow.log" || true)
        if ((${nwarn:-0} > 0)); then
            echo "- log: $nwarn WARN/ERROR line(s); the distinct ones, counted (timestamps cut, numbers and hex as N):"
            echo
            grep -aE ' (WARN|ERROR) ' "$TMP/logs/burrow.log" | sed -E 's/^[0-9T:.-]+Z +//; s/[0-9a-f]{6,}|[0-9]+/N/g' |
                sort | uniq -c | sort -rn | head -10 | sed 's/^/        /'
        else
            echo "- log: no WARN/ERROR lines"
        fi
        echo
    fi
    echo "Finished in $(($(date +%s) - START_EPOCH)) s; load average at the end $(cut -d' ' -f1-3 /proc/loadavg)."
} >"$REPORT"
OUT_DIR="$ROOT/target/bench-results"
mkdir -p "$OUT_DIR"
cp "$REPORT" "$OUT_DIR/compare-$STAMP.md"
cp "$RESULTS" "$OUT_DIR/compare-$STAMP.tsv"
echo
sed -n "$(($(wc -l <"$HEADER") + 1)),\$p" "$REPORT"
log "report: $OUT_DIR/compare-$STAMP.md (raw numbers: compare-$STAMP.tsv)"
