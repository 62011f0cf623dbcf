#!/usr/bin/env bash
# benches/inspector.sh: the proxy's hot path with no request inspector open
# vs one open (issue 16, part 2). One burrow, one nginx origin serving 1 KiB,
# one `ssh -tt -R 80:… -L PORT:localhost:4040` client; alternating runs of
# `wrk -t2 -c64 -dDURATION` over plain HTTP (--http-mode proxy) with nobody
# inspecting ("off") and with the inspector's live feed held open ("on":
# every request is captured, headers and bodies, into the bounded store).
#
#   BURROW_BIN=target/release/burrow DURATION=10 PAIRS=3 benches/inspector.sh
#
# Prints one line per run: mode, req/s, burrow's CPU time per request, the
# inspector streams burrow counted at the end of the run, and the newest
# captured entry's id (how many requests were captured so far).
set -euo pipefail
BURROW_BIN=${BURROW_BIN:-target/release/burrow}
DURATION=${DURATION:-10}
PAIRS=${PAIRS:-3}
TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    if [[ -f $TMP/nginx.pid ]]; then kill "$(cat "$TMP/nginx.pid")" 2>/dev/null || true; fi
    rm -rf "$TMP"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# burrow's CPU time so far, in clock ticks (utime + stime).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$BURROW_PID/stat"; }
stat_streams() { curl -s "http://127.0.0.1:$B_STATS/" | grep -oE '"inspector_connections":[0-9]+' | cut -d: -f2; }

P_ORIGIN=$(free_port)
mkdir -p "$TMP/www" "$TMP/nginx"
head -c 1024 /dev/zero | tr '\0' 'x' >"$TMP/www/1k"
# nginx's workers may run as another user (nobody, when started as root).
chmod 755 "$TMP" "$TMP/www" && chmod 644 "$TMP/www/1k"
cat >"$TMP/nginx.conf" <<NGINX
worker_processes 1;
pid $TMP/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx/body; proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fcgi; uwsgi_temp_path $TMP/nginx/uwsgi; scgi_temp_path $TMP/nginx/scgi;
    server { listen 127.0.0.1:$P_ORIGIN; root $TMP/www; location = /1k { } }
}
NGINX
nginx -p "$TMP/nginx" -c "$TMP/nginx.conf" 2>/dev/null

"$BURROW_BIN" --domain localhost --ssh-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
    --https-addr 127.0.0.1:0 --stats-addr 127.0.0.1:0 --http-mode proxy \
    --host-key "$TMP/host_key" --state-dir "$TMP/state" --no-browser-warning \
    --visitor-rate 1000000/s --visitor-burst 1000000 --tunnel-rate 1000000/s --tunnel-burst 1000000 \
    --max-inflight-per-visitor 100000 --max-inflight-per-tunnel 100000 >"$TMP/burrow.log" 2>&1 &
PIDS+=($!)
BURROW_PID=$!
for _ in $(seq 100); do grep -q '^burrow ready:' "$TMP/burrow.log" && break; sleep 0.1; done
ready=$(grep -m1 '^burrow ready:' "$TMP/burrow.log")
B_SSH=$(sed -E 's/.* ssh=127\.0\.0\.1:([0-9]+).*/\1/' <<<"$ready")
B_HTTP=$(sed -E 's/.* http=127\.0\.0\.1:([0-9]+).*/\1/' <<<"$ready")
B_STATS=$(sed -E 's/.* stats=127\.0\.0\.1:([0-9]+).*/\1/' <<<"$ready")

P_INSPECT=$(free_port)
ssh-keygen -q -t ed25519 -N '' -f "$TMP/key"
ssh -F /dev/null -i "$TMP/key" -o IdentitiesOnly=yes -o StrictHostKeyChecking=no \
    -o UserKnownHostsFile=/dev/null -c chacha20-poly1305@openssh.com -tt -p "$B_SSH" \
    -R "80:127.0.0.1:$P_ORIGIN" -L "127.0.0.1:$P_INSPECT:localhost:4040" \
    random@127.0.0.1 </dev/null >"$TMP/ssh.log" 2>&1 &
PIDS+=($!)
HOST=
for _ in $(seq 100); do
    HOST=$(grep -aoE 'https://[a-z0-9-]+\.localhost' "$TMP/ssh.log" | head -1 | sed 's#https://##' || true)
    [[ -n $HOST ]] && break
    sleep 0.1
done
[[ -n $HOST ]] || { echo "no tunnel: $(cat "$TMP/ssh.log")" >&2; exit 1; }
for _ in $(seq 50); do curl -sf -o /dev/null -H "Host: $HOST" "http://127.0.0.1:$B_HTTP/1k" && break; sleep 0.2; done
curl -sf -o /dev/null -H "Host: $HOST" "http://127.0.0.1:$B_HTTP/1k" || { echo "the tunnel does not answer 200" >&2; exit 1; }

run() {
    local mode=$1 holder='' out rps bad streams newest cpu0 cpu1 requests us
    # Nobody inspecting: wait for the last run's streams to close.
    for _ in $(seq 100); do
        [[ $mode == on || $(stat_streams) -eq 0 ]] && break
        sleep 0.1
    done
    if [[ $mode == on ]]; then
        # The page's live feed: one long poll after another.
        (while true; do curl -s "http://127.0.0.1:$P_INSPECT/api/entries?after=999999999999&wait=1" >/dev/null; done) &
        holder=$!
        for _ in $(seq 100); do
            [[ $(stat_streams) -ge 1 ]] && break
            sleep 0.1
        done
    fi
    cpu0=$(cpu_ticks)
    out=$(wrk -t2 -c64 -d"${DURATION}s" -H "Host: $HOST" "http://127.0.0.1:$B_HTTP/1k")
    cpu1=$(cpu_ticks)
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
    # burrow's CPU per request, in microseconds: steadier than req/s on a
    # loaded machine.
    us=$(awk -v t=$((cpu1 - cpu0)) -v hz="$(getconf CLK_TCK)" -v n="$requests" 'BEGIN {printf "%.1f", t * 1e6 / hz / n}')
    bad=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
    streams=$(stat_streams)
    if [[ -n $holder ]]; then
        pkill -P "$holder" 2>/dev/null || true
        kill "$holder" 2>/dev/null || true
        wait "$holder" 2>/dev/null || true
    fi
    # The newest entry id: how many requests were captured so far.
    newest=$(curl -s "http://127.0.0.1:$P_INSPECT/api/entries" | grep -oE '"kept":\[[0-9,]*\]' | grep -oE '[0-9]+' | tail -1 || true)
    echo "$mode req/s=$rps cpu_us/req=$us non2xx=${bad:-0} inspector_connections=$streams captured_so_far=${newest:-0}"
}
for _ in $(seq "$PAIRS"); do
    run off
    run on
done
