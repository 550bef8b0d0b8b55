#!/bin/sh
# tests/redis_server.sh: a throwaway redis-server (or a Redis Cluster of
# three masters) for tests, in a folder of its own, listening on 127.0.0.1
# only, with persistence off (no RDB, no AOF).
#
#   tests/redis_server.sh start DIR            one server; prints its port and
#                                              writes it to DIR/ports
#   tests/redis_server.sh start DIR --cluster  three cluster-enabled masters,
#                                              joined by redis-cli --cluster
#                                              create; returns once every node
#                                              says cluster_state:ok; prints the
#                                              ports (one a line) and writes
#                                              them to DIR/ports
#   tests/redis_server.sh restart DIR          stop and start again on the same
#                                              port(s) (single server only), for
#                                              reconnection tests
#   tests/redis_server.sh stop DIR             stop what DIR's pid files name
#
# DIR holds redis-PORT.pid, redis-PORT.log, nodes-PORT.conf (cluster) and
# ports. `start` on a DIR whose servers run only prints the ports. `stop` on
# a DIR with nothing running does nothing. A server is stopped by the pid in
# its pid file, and only if that pid is a redis-server (never by name); a
# stopped (SIGSTOP) server is continued first. A `start` that fails half-way
# stops what it started. Works as root: redis-server does not mind.
set -eu

REDIS_SERVER=${REDIS_SERVER:-redis-server}
REDIS_CLI=${REDIS_CLI:-redis-cli}
PORT_FIRST=36379
PORT_LAST=36578 # cluster buses use PORT + 10000
READY_TIMEOUT_S=30

die() {
    echo "redis_server.sh: $*" >&2
    exit 1
}

usage() {
    echo "usage: $0 start DIR [--cluster] | restart DIR | stop DIR" >&2
    exit 2
}

[ $# -ge 2 ] || usage
cmd=$1
[ -n "$2" ] || usage
cluster=0
if [ $# -eq 3 ]; then
    [ "$3" = "--cluster" ] && [ "$cmd" = start ] || usage
    cluster=1
fi
[ $# -le 3 ] || usage
command -v "$REDIS_SERVER" >/dev/null 2>&1 || die "no $REDIS_SERVER (install redis-server)"
command -v "$REDIS_CLI" >/dev/null 2>&1 || die "no $REDIS_CLI (install redis-tools)"

mkdir -p "$2"
DIR=$(cd "$2" && pwd -P)
case $DIR in
*"'"* | *'"'* | *\\* | *" "*) die "DIR must not contain quotes, blanks or backslashes: $DIR" ;;
esac

# 0 if something listens on (or accepts connections on) 127.0.0.1:$1.
port_busy() {
    if command -v ss >/dev/null 2>&1; then
        [ -n "$(ss -Htln "sport = :$1" 2>/dev/null)" ] && return 0
    fi
    if command -v bash >/dev/null 2>&1; then
        timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null && return 0
    fi
    return 1
}

# The pid in DIR/redis-$1.pid if that process is a redis-server, else nothing.
pid_of() {
    f=$DIR/redis-$1.pid
    [ -f "$f" ] || return 0
    p=$(cat "$f" 2>/dev/null || true)
    case $p in '' | *[!0-9]*) return 0 ;; esac
    comm=$(cat "/proc/$p/comm" 2>/dev/null || true)
    case $comm in redis-server* | redis-check*) echo "$p" ;; esac
}

stop_port() {
    p=$(pid_of "$1")
    if [ -n "$p" ]; then
        kill -CONT "$p" 2>/dev/null || true
        kill -TERM "$p" 2>/dev/null || true
        i=0
        while kill -0 "$p" 2>/dev/null; do
            i=$((i + 1))
            if [ "$i" -ge 100 ]; then
                kill -KILL "$p" 2>/dev/null || true
                sleep 0.1
                break
            fi
            sleep 0.1
        done
    fi
    rm -f "$DIR/redis-$1.pid"
}

stop_all() {
    [ -f "$DIR/ports" ] || [ -f "$DIR/ports.new" ] || return 0
    for port in $(cat "$DIR/ports" "$DIR/ports.new" 2>/dev/null); do
        stop_port "$port"
    done
    rm -f "$DIR/ports.new"
}

cli() { # port args...
    p=$1
    shift
    "$REDIS_CLI" -h 127.0.0.1 -p "$p" "$@"
}

# Start one server on port $1 ($2 = 1 for cluster mode); 0 once it answers PING.
start_on() {
    rm -f "$DIR/redis-$1.pid" "$DIR/nodes-$1.conf" "$DIR/redis-$1.log"
    set -- "$1" "$2"
    if [ "$2" = 1 ]; then
        extra="--cluster-enabled yes --cluster-config-file $DIR/nodes-$1.conf --cluster-node-timeout 5000"
    else
        extra=""
    fi
    # shellcheck disable=SC2086
    "$REDIS_SERVER" --port "$1" --bind 127.0.0.1 --save '' --appendonly no \
        --daemonize yes --pidfile "$DIR/redis-$1.pid" --logfile "$DIR/redis-$1.log" \
        --dir "$DIR" --dbfilename "dump-$1.rdb" $extra >/dev/null 2>&1 || return 1
    i=0
    while [ "$(cli "$1" ping 2>/dev/null || true)" != PONG ]; do
        # Lost a race for the port (or another failure): give up on it now.
        if grep -q -e 'Could not create server TCP listening socket' -e 'Address already in use' \
            "$DIR/redis-$1.log" 2>/dev/null; then
            stop_port "$1"
            return 1
        fi
        i=$((i + 1))
        if [ "$i" -ge $((READY_TIMEOUT_S * 10)) ]; then
            stop_port "$1"
            return 1
        fi
        sleep 0.1
    done
    # The pid file is written by the daemon; make sure it is there.
    [ -n "$(pid_of "$1")" ] || {
        sleep 0.2
        [ -n "$(pid_of "$1")" ]
    }
}

running() {
    [ -f "$DIR/ports" ] || return 1
    for port in $(cat "$DIR/ports"); do
        [ -n "$(pid_of "$port")" ] || return 1
    done
    return 0
}

do_start() {
    if running; then
        cat "$DIR/ports"
        return 0
    fi
    stop_all
    rm -f "$DIR/ports"
    trap 'stop_all' EXIT
    trap 'exit 130' INT TERM HUP
    want=1
    [ "$cluster" = 0 ] || want=3
    : >"$DIR/ports.new"
    got=0
    # Start at a random port of the range, not its first: a test that has
    # just stopped its server expects its port to stay dead, and another test
    # starting a server at that moment would otherwise take the first free
    # port, which is often that one.
    span=$((PORT_LAST - PORT_FIRST + 1))
    off=$(($(od -An -N2 -tu2 /dev/urandom | tr -d ' ') % span))
    tried=0
    while [ "$got" -lt "$want" ]; do
        [ "$tried" -lt "$span" ] || die "no free port in $PORT_FIRST..$PORT_LAST"
        port=$((PORT_FIRST + (off + tried) % span))
        tried=$((tried + 1))
        if ! port_busy "$port" && { [ "$cluster" = 0 ] || ! port_busy $((port + 10000)); }; then
            if start_on "$port" "$cluster"; then
                echo "$port" >>"$DIR/ports.new"
                got=$((got + 1))
            fi
        fi
    done
    if [ "$cluster" = 1 ]; then
        nodes=""
        for p in $(cat "$DIR/ports.new"); do
            nodes="$nodes 127.0.0.1:$p"
        done
        # shellcheck disable=SC2086
        "$REDIS_CLI" --cluster create $nodes --cluster-replicas 0 --cluster-yes \
            >"$DIR/cluster-create.log" 2>&1 || die "redis-cli --cluster create failed; see $DIR/cluster-create.log"
        for p in $(cat "$DIR/ports.new"); do
            i=0
            while ! cli "$p" cluster info 2>/dev/null | grep -q '^cluster_state:ok'; do
                i=$((i + 1))
                [ "$i" -lt $((READY_TIMEOUT_S * 10)) ] || die "the cluster is not ok on port $p"
                sleep 0.1
            done
        done
    fi
    mv "$DIR/ports.new" "$DIR/ports"
    trap - EXIT INT TERM HUP
    cat "$DIR/ports"
}

do_restart() {
    [ -f "$DIR/ports" ] || die "nothing was started in $DIR"
    [ "$(wc -l <"$DIR/ports")" -eq 1 ] || die "restart is for a single server"
    port=$(cat "$DIR/ports")
    stop_port "$port"
    i=0
    while port_busy "$port"; do
        i=$((i + 1))
        [ "$i" -lt 100 ] || die "port $port stays busy"
        sleep 0.1
    done
    start_on "$port" 0 || die "cannot start again on port $port; see $DIR/redis-$port.log"
    cat "$DIR/ports"
}

case $cmd in
start) do_start ;;
restart) do_restart ;;
stop)
    stop_all
    rm -f "$DIR/ports"
    ;;
*) usage ;;
esac
