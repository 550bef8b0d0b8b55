#!/usr/bin/env bash
# bench/load.sh: HTTP load through `phigate serve` against nginx as a plain
# reverse proxy in front of the same upstream, on loopback. Prints figures
# only (requests/s, latency median and p99); it never passes or fails on
# time. See bench/README.md ("load.sh") for what is measured and why.
#
#   upstream   nginx, 1 worker, serving a small JSON file
#   baseline   nginx as a reverse proxy, THREADS workers, keepalive to upstream
#   gateway    phigate serve --threads THREADS, SQLite store, a user key with
#              no rate limit ("phigate"), and one whose every request is
#              checked against two windows it never reaches ("phigate+rl")
#   load       wrk -t WRK_THREADS -c CONNECTIONS, WARMUP s then DURATION s,
#              both targets with the same Authorization header, interleaved
#              (baseline, gateway, baseline, gateway, ...) for ROUNDS rounds
#
# Builds nothing: it runs ./build/phigate (make build) or $PHIGATE. Needs
# nginx and wrk (scripts/install-bench-deps.sh). Every process it starts is
# stopped, and its temporary directory removed, when it exits.
#
# Environment: ROUNDS (3), CONNECTIONS (64), DURATION (5, seconds),
# WARMUP (1, seconds), THREADS (2: phigate loops = nginx proxy workers),
# WRK_THREADS (1), PHIGATE (./build/phigate), REQUEST_PATH (/v1/readings),
# REDIS (0; 1: rate limits on a throwaway redis-server).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-64}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
THREADS=${THREADS:-2}
WRK_THREADS=${WRK_THREADS:-1}
PHIGATE=${PHIGATE:-./build/phigate}
REQUEST_PATH=${REQUEST_PATH:-/v1/readings}
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3

die() {
    echo "load.sh: $*" >&2
    exit 1
}

for v in ROUNDS CONNECTIONS DURATION THREADS WRK_THREADS; do
    val=${!v}
    if ! [[ "$val" =~ ^[0-9]+$ ]] || [ "$val" -lt 1 ]; then
        die "$v must be a positive integer (got '$val')"
    fi
done
[[ "$WARMUP" =~ ^[0-9]+$ ]] || die "WARMUP must be a whole number of seconds (got '$WARMUP')"
[ "$CONNECTIONS" -ge "$WRK_THREADS" ] || die "CONNECTIONS must be at least WRK_THREADS"
[[ "$REQUEST_PATH" =~ ^/[A-Za-z0-9/_.-]*$ ]] || die "REQUEST_PATH must be a plain path"

[ -x "$PHIGATE" ] || die "$PHIGATE not found: run 'make build' first (or set PHIGATE)"
"$PHIGATE" serve --help >/dev/null 2>&1 || die "$PHIGATE has no working 'serve' command: rebuild with 'make build'"
command -v nginx >/dev/null 2>&1 || die "nginx not found: run scripts/install-bench-deps.sh (as root)"
command -v wrk >/dev/null 2>&1 || die "wrk not found: run scripts/install-bench-deps.sh (as root)"
command -v curl >/dev/null 2>&1 || die "curl not found (apt-get install curl)"

tmp=$(mktemp -d /tmp/phigate-load-XXXXXX)
pids=()

stop_pid() {
    local pid=$1 _
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local p
    trap - EXIT INT TERM
    for p in "${pids[@]+"${pids[@]}"}"; do
        stop_pid "$p"
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The workers of an nginx started by root run as nobody: they must be able to
# reach the served file, but not the secret subdirectory.
chmod 711 "$tmp"
mkdir -m 700 "$tmp/secret"
mkdir -p "$tmp/www$(dirname "$REQUEST_PATH")" "$tmp/nginx-up" "$tmp/nginx-proxy"
chmod -R a+rX "$tmp/www"

# A wearable reading like the ones the demo upstream returns (about 200 bytes).
cat >"$tmp/www$REQUEST_PATH" <<'EOF'
{"readings":[{"user_id":"u-1042","ts":"2026-01-15T07:30:00Z","heart_rate":61,"hrv":48.2,"resp_rate":14.1,"spo2":97,"device":"ring-gen3","sleep_stage":"deep"}],"next":null}
EOF
chmod 644 "$tmp/www$REQUEST_PATH"

# Three free loopback ports. A port could in theory be taken between this
# check and the bind; the servers' startup check below then says so.
read -r up_port proxy_port gw_port redis_port < <("$PY" - <<'EOF'
import socket
socks = []
for _ in range(4):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
EOF
)

# nginx config common to both instances. Every path nginx writes is inside
# the temporary directory so that it runs as any user (-p prefix, -c conf).
nginx_common() {
    local dir=$1 workers=$2
    cat <<EOF
worker_processes $workers;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 65s;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
EOF
}

{
    nginx_common "$tmp/nginx-up" 1
    cat <<EOF
    server {
        listen 127.0.0.1:$up_port;
        root $tmp/www;
        default_type application/json;
        location / { }
    }
}
EOF
} >"$tmp/nginx-up/nginx.conf"

{
    nginx_common "$tmp/nginx-proxy" "$THREADS"
    cat <<EOF
    upstream backend {
        server 127.0.0.1:$up_port;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$proxy_port;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
} >"$tmp/nginx-proxy/nginx.conf"

# Wait until url answers 200 (10 s at most); name: what it is; pid: the
# process that must still be alive; log: what to show if it is not.
wait_ready() {
    local name=$1 url=$2 pid=$3 log=$4 code _
    for _ in $(seq 1 100); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "load.sh: $name exited before it answered; its log:" >&2
            sed 's/^/    /' "$log" >&2 || true
            exit 1
        fi
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" 2>/dev/null || true)
        [ "$code" = 200 ] && return 0
        sleep 0.1
    done
    echo "load.sh: $name did not answer 200 at $url within 10 s (last status: ${code:-none}); its log:" >&2
    sed 's/^/    /' "$log" >&2 || true
    exit 1
}

start_nginx() {
    local name=$1 dir=$2 port=$3
    nginx -t -q -p "$dir" -c "$dir/nginx.conf" >"$dir/start.log" 2>&1 ||
        { sed 's/^/    /' "$dir/start.log" >&2; die "the $name nginx config is invalid"; }
    nginx -p "$dir" -c "$dir/nginx.conf" >>"$dir/start.log" 2>&1 &
    pids+=($!)
    wait_ready "nginx ($name)" "http://127.0.0.1:$port$REQUEST_PATH" "$!" "$dir/error.log"
}

start_nginx upstream "$tmp/nginx-up" "$up_port"
start_nginx proxy "$tmp/nginx-proxy" "$proxy_port"

# phigate: a fresh store, a fresh master key, one user key. The master key
# and the API key stay in the environment and in 0600 files of a 0700
# directory, never on a command line.
store="sqlite:$tmp/secret/gw.db"
PHI_MASTER_KEY=$("$PHIGATE" phi keygen) || die "phigate phi keygen failed"
export PHI_MASTER_KEY
"$PHIGATE" migrate --store "$store" >/dev/null || die "phigate migrate failed"
# Two keys: one with no rate limit at all ("none": not even checked), and
# one with limits far above what one machine serves (checked on every
# request, never refusing), so that the two phigate targets differ only by
# the rate-limit decision.
(umask 077 && "$PHIGATE" keys create --store "$store" --role user --user bench \
    --description "bench/load.sh" --limit none --json >"$tmp/secret/key.json") ||
    die "phigate keys create failed"
(umask 077 && "$PHIGATE" keys create --store "$store" --role user --user bench-rl \
    --description "bench/load.sh, rate limited" --limit 100000000/1s,900000000/1h \
    --json >"$tmp/secret/key-rl.json") || die "phigate keys create failed"
api_key=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["key"])' "$tmp/secret/key.json")
api_key_rl=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["key"])' "$tmp/secret/key-rl.json")

# The header goes to wrk through a script and to curl through a config file
# (both 0600), not on a command line.
(umask 077 &&
    printf 'wrk.headers["Authorization"] = "Bearer %s"\n' "$api_key" >"$tmp/secret/auth.lua" &&
    printf 'wrk.headers["Authorization"] = "Bearer %s"\n' "$api_key_rl" >"$tmp/secret/auth-rl.lua" &&
    printf 'header = "Authorization: Bearer %s"\n' "$api_key" >"$tmp/secret/curl.cfg")
unset api_key api_key_rl

# REDIS=1: rate limits on a throwaway Redis (the phigate+rl target's
# decisions are then a round trip each).
redis_args=()
if [ "${REDIS:-0}" = 1 ]; then
    command -v redis-server >/dev/null || die "REDIS=1 needs redis-server"
    redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
        --daemonize no --dir "$tmp" >"$tmp/redis.log" 2>&1 &
    pids+=("$!")
    for _ in $(seq 1 100); do
        redis-cli -h 127.0.0.1 -p "$redis_port" ping 2>/dev/null | grep -q PONG && break
        sleep 0.05
    done
    redis_args=(--redis "redis://127.0.0.1:$redis_port")
fi

PHIGATE_LOG_LEVEL=${PHIGATE_LOG_LEVEL:-warn} \
    "$PHIGATE" serve --listen "127.0.0.1:$gw_port" --upstream "http://127.0.0.1:$up_port" \
    --store "$store" --threads "$THREADS" "${redis_args[@]}" 2>"$tmp/phigate.log" &
gw_pid=$!
pids+=("$gw_pid")
wait_ready "phigate serve" "http://127.0.0.1:$gw_port/readyz" "$gw_pid" "$tmp/phigate.log"

# One authenticated request through each before loading: a 401, 404 or 502
# here would make every figure below meaningless.
check_target() {
    local name=$1 port=$2 code
    code=$(curl -s -o "$tmp/check.out" -w '%{http_code}' --max-time 5 \
        -K "$tmp/secret/curl.cfg" "http://127.0.0.1:$port$REQUEST_PATH" || true)
    if [ "$code" != 200 ]; then
        echo "load.sh: $name answered $code to an authenticated GET $REQUEST_PATH:" >&2
        head -c 2000 "$tmp/check.out" >&2 || true
        echo >&2
        [ "$name" = phigate ] && { echo "phigate's log:" >&2; tail -n 40 "$tmp/phigate.log" | sed 's/^/    /' >&2; }
        exit 1
    fi
}
check_target nginx "$proxy_port"
check_target phigate "$gw_port"

# One wrk run, in this shell (so that an interrupted run is stopped with the
# rest); sets rps, p50, p99 (ms), non2xx and errors.
run_wrk() {
    local port=$1 seconds=$2 auth=${3:-auth} out=$tmp/wrk.out wrk_pid rc=0
    wrk -t "$WRK_THREADS" -c "$CONNECTIONS" -d "${seconds}s" --timeout 10s --latency \
        -s "$tmp/secret/$auth.lua" "http://127.0.0.1:$port$REQUEST_PATH" >"$out" 2>&1 &
    wrk_pid=$!
    pids+=("$wrk_pid")
    wait "$wrk_pid" || rc=$?
    unset 'pids[${#pids[@]}-1]'
    if [ "$rc" -ne 0 ]; then
        cat "$out" >&2
        die "wrk failed (exit status $rc)"
    fi
    read -r rps p50 p99 non2xx errors < <(awk '
        function ms(v) {
            if (v ~ /us$/) return substr(v, 1, length(v) - 2) / 1000
            if (v ~ /ms$/) return substr(v, 1, length(v) - 2) + 0
            if (v ~ /m$/)  return substr(v, 1, length(v) - 1) * 60000
            if (v ~ /s$/)  return substr(v, 1, length(v) - 1) * 1000
            return v + 0
        }
        $1 == "Requests/sec:" { rps = $2 }
        $1 == "50%" { p50 = ms($2) }
        $1 == "99%" { p99 = ms($2) }
        /Non-2xx or 3xx responses:/ { non2xx = $NF }
        /Socket errors:/ { gsub(/,/, ""); errors = $4 + $6 + $8 + $10 }
        END { printf "%.0f %.3f %.3f %d %d\n", rps, p50, p99, non2xx, errors }
    ' "$out")
}

echo "phigate load benchmark: $(nproc) CPUs, $("$PHIGATE" version 2>/dev/null | head -n1)," \
    "$(nginx -v 2>&1 | sed 's/^nginx version: //'), $(wrk -v 2>&1 | head -n1 | awk '{print $1, $2}')"
echo "wrk -t$WRK_THREADS -c$CONNECTIONS, ${WARMUP} s warm-up + ${DURATION} s per run, $ROUNDS rounds;" \
    "phigate --threads $THREADS, nginx proxy worker_processes $THREADS, upstream nginx 1 worker"
echo "GET $REQUEST_PATH with Authorization: Bearer <user key>, $(wc -c <"$tmp/www$REQUEST_PATH") byte JSON body"
echo
printf '%-6s %-10s %12s %10s %10s %8s\n' round target req/s p50_ms p99_ms non-2xx

: >"$tmp/results"
for round in $(seq 1 "$ROUNDS"); do
    for target in nginx phigate phigate+rl; do
        auth=auth
        if [ "$target" = nginx ]; then port=$proxy_port; else port=$gw_port; fi
        if [ "$target" = phigate+rl ]; then auth=auth-rl; fi
        if [ "$WARMUP" -gt 0 ]; then
            run_wrk "$port" "$WARMUP" "$auth"
        fi
        run_wrk "$port" "$DURATION" "$auth"
        printf '%-6s %-10s %12s %10s %10s %8s\n' "$round" "$target" "$rps" "$p50" "$p99" "$non2xx"
        if [ "$errors" -gt 0 ]; then
            echo "       ($errors socket errors in this run)"
        fi
        echo "$target $rps $p50 $p99 $non2xx" >>"$tmp/results"
        if [ "$target" != nginx ] && ! kill -0 "$gw_pid" 2>/dev/null; then
            echo "load.sh: phigate exited during the run; its log:" >&2
            tail -n 40 "$tmp/phigate.log" | sed 's/^/    /' >&2
            exit 1
        fi
    done
done

echo
"$PY" - "$tmp/results" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
med = {}
for t in ("nginx", "phigate", "phigate+rl"):
    r = [x for x in rows if x[0] == t]
    med[t] = tuple(statistics.median(float(x[i]) for x in r) for i in (1, 2, 3))
    bad = sum(int(x[4]) for x in r)
    print("median %-10s %10.0f req/s  p50 %7.3f ms  p99 %7.3f ms%s" % (
        t, med[t][0], med[t][1], med[t][2],
        "  (%d non-2xx responses: figures not comparable)" % bad if bad else ""))
n, g = med["nginx"], med["phigate"]
ratio = g[0] / n[0] if n[0] else float("nan")
print("phigate/nginx req/s %.2f; p50 %+.3f ms, p99 %+.3f ms (phigate minus nginx)" % (
    ratio, g[1] - n[1], g[2] - n[2]))
r = med["phigate+rl"]
print("rate limits on: phigate+rl/phigate req/s %.2f; p99 %+.3f ms (every request checked "
      "against two windows)" % (r[0] / g[0] if g[0] else float("nan"), r[2] - g[2]))
EOF
