#!/usr/bin/env bash
# bench/ratelimit.sh: `phigate bench ratelimit` on the local engine and on a
# throwaway Redis server started here on a free loopback port (no
# persistence), stopped by its pid when this script exits. Prints figures
# only; it never passes or fails on time.
#
# Builds nothing: it runs ./build/phigate (make build) or $PHIGATE. Needs
# redis-server and redis-cli. Extra arguments go to the benchmark
# (--json, --ms N, --requests N).
set -euo pipefail
cd "$(dirname "$0")/.."

PHIGATE=${PHIGATE:-./build/phigate}
[ -x "$PHIGATE" ] || { echo "ratelimit.sh: $PHIGATE not found (make build)" >&2; exit 1; }
command -v redis-server >/dev/null || { echo "ratelimit.sh: redis-server not found" >&2; exit 1; }

# A free loopback port: the kernel picks one, we release it and use it.
port=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
dir=$(mktemp -d /tmp/phigate-bench-redis-XXXXXX)
redis_pid=
cleanup() {
    if [ -n "$redis_pid" ]; then
        kill "$redis_pid" 2>/dev/null || true
        wait "$redis_pid" 2>/dev/null || true
    fi
    rm -rf "$dir"
}
trap cleanup EXIT

redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize no \
    --dir "$dir" >"$dir/redis.log" 2>&1 &
redis_pid=$!
for _ in $(seq 1 100); do
    if redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG; then
        break
    fi
    if ! kill -0 "$redis_pid" 2>/dev/null; then
        echo "ratelimit.sh: redis-server did not start:" >&2
        cat "$dir/redis.log" >&2
        exit 1
    fi
    sleep 0.05
done

"$PHIGATE" bench ratelimit --redis "redis://127.0.0.1:$port" "$@"
