#!/bin/sh
# tests/pg_server.sh: a throwaway PostgreSQL 15 for tests, in a folder of its
# own, listening on 127.0.0.1 only, with no authentication (-A trust).
#
#   tests/pg_server.sh start DIR    start (initdb first if DIR is new); prints
#                                   the URL and writes it to DIR/url
#   tests/pg_server.sh stop DIR     stop it (pg_ctl -m immediate, by its pid file)
#   tests/pg_server.sh restart DIR  stop it (fast) and start it again on the
#                                   same port and data, for reconnection tests
#
# The URL is postgres://postgres@127.0.0.1:PORT/phigate_test. DIR holds data/
# (the cluster), sock/ (the Unix socket), log (the server log), port and url.
# `start` on a DIR whose server runs only prints the URL. `stop` on a DIR
# whose server is not running does nothing.
#
# It does not install anything (scripts/install-deps.sh does) and never stops
# a server by name, only the one whose pid file is in DIR/data. A `start` that
# fails half-way stops the server it started. As root (CI), the server runs as
# the `postgres` OS user, since initdb and postgres refuse to run as root; DIR
# is then chown'ed to it, and every folder above DIR must be searchable by it
# (mktemp -d under /tmp is). See ../../shared/research/platform-notes.md.
set -eu

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PORT_FIRST=55432
PORT_LAST=55631
READY_TIMEOUT_S=30
DBNAME=phigate_test

die() {
    echo "pg_server.sh: $*" >&2
    exit 1
}

usage() {
    echo "usage: $0 start|stop|restart DIR" >&2
    exit 2
}

[ $# -eq 2 ] || usage
cmd=$1
[ -n "$2" ] || usage
[ -x "$PGBIN/postgres" ] || die "no PostgreSQL 15 in $PGBIN (run scripts/install-deps.sh)"

mkdir -p "$2"
DIR=$(cd "$2" && pwd -P)
case $DIR in
*"'"* | *'"'* | *\\*) die "DIR must not contain quotes or backslashes: $DIR" ;;
esac
DATA=$DIR/data
SOCK=$DIR/sock
LOG=$DIR/log
# A Unix socket path is limited to 107 bytes: sock/.s.PGSQL.NNNNN must fit.
[ ${#SOCK} -le 88 ] || die "DIR is too long for a Unix socket path: $DIR"

# Run a PostgreSQL program as the user that owns the cluster.
if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || die "no 'postgres' OS user (is postgresql-15 installed?)"
    as_pg() { (cd "$DIR" && runuser -u postgres -- "$@"); }
else
    as_pg() { (cd "$DIR" && "$@"); }
fi

is_running() {
    [ -f "$DATA/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1
}

# 0 if something accepts TCP connections on 127.0.0.1:$1 (or listens on it).
port_busy() {
    if command -v ss >/dev/null 2>&1; then
        [ -n "$(ss -Htln "sport = :$1" 2>/dev/null)" ] && return 0
    fi
    # bash's /dev/tcp as a fallback connect attempt; without bash, trust ss.
    if command -v bash >/dev/null 2>&1; then
        timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null && return 0
    fi
    return 1
}

write_conf() { # port
    cat >"$DATA/phigate_test.conf" <<EOF
# Written by tests/pg_server.sh on every start.
listen_addresses = '127.0.0.1'
port = $1
unix_socket_directories = '$SOCK'
fsync = on
synchronous_commit = on
max_connections = 100
EOF
    [ "$(id -u)" -ne 0 ] || chown postgres "$DATA/phigate_test.conf"
}

# Start the server on port $1; 0 once it accepts connections. On failure
# (for example the port was taken in the meantime) the server is stopped.
start_on() { # port
    write_conf "$1"
    if ! as_pg "$PGBIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t "$READY_TIMEOUT_S" start >/dev/null; then
        stop_now
        return 1
    fi
    i=0
    while ! as_pg "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$1" -d postgres -t 2; do
        i=$((i + 1))
        if [ "$i" -ge "$READY_TIMEOUT_S" ]; then
            stop_now
            return 1
        fi
        sleep 1
    done
    return 0
}

stop_now() {
    if [ -f "$DATA/postmaster.pid" ]; then
        as_pg "$PGBIN/pg_ctl" -D "$DATA" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
    fi
}

create_db() { # port
    exists=$(as_pg "$PGBIN/psql" -X -q -t -A -h "$SOCK" -p "$1" -U postgres -d postgres \
        -c "SELECT 1 FROM pg_database WHERE datname = '$DBNAME'")
    if [ "$exists" != "1" ]; then
        as_pg "$PGBIN/createdb" -h "$SOCK" -p "$1" -U postgres "$DBNAME"
    fi
}

print_url() {
    cat "$DIR/url"
}

do_start() {
    if is_running; then
        if [ ! -f "$DIR/url" ]; then
            # Running, but killed before it wrote the URL last time.
            [ -f "$DIR/port" ] || die "a server runs in $DATA but DIR/port is missing"
            create_db "$(cat "$DIR/port")" || die "cannot create database $DBNAME; see $LOG"
            echo "postgres://postgres@127.0.0.1:$(cat "$DIR/port")/$DBNAME" >"$DIR/url"
        fi
        print_url
        return 0
    fi
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres "$DIR"
        chmod 700 "$DIR"
        as_pg test -x "$DIR" || die "the postgres user cannot reach $DIR (a parent is not searchable)"
    fi
    mkdir -p "$SOCK"
    chmod 700 "$SOCK"
    [ "$(id -u)" -ne 0 ] || chown postgres "$SOCK"
    touch "$LOG"
    [ "$(id -u)" -ne 0 ] || chown postgres "$LOG"

    # From here on, a failure must not leave a server running.
    trap 'stop_now' EXIT
    trap 'exit 130' INT TERM HUP
    if [ ! -f "$DATA/PG_VERSION" ]; then
        rm -rf "$DATA"
        as_pg "$PGBIN/initdb" -D "$DATA" -U postgres -A trust -E UTF8 --locale=C \
            --no-sync >>"$LOG" 2>&1 || die "initdb failed; see $LOG"
        echo "include_if_exists = 'phigate_test.conf'" >>"$DATA/postgresql.conf"
    fi
    # A stale pid file (killed machine) is handled by postgres itself.

    if [ -f "$DIR/port" ] && [ "${KEEP_PORT:-0}" = 1 ]; then
        # restart: the same port, so that a URL already handed out stays valid.
        port=$(cat "$DIR/port")
        start_on "$port" || die "cannot start on port $port; see $LOG"
    else
        # A fresh start takes any free port: one saved by an earlier run may
        # belong to another server by now.
        port=$PORT_FIRST
        while :; do
            [ "$port" -le "$PORT_LAST" ] || die "no free port in $PORT_FIRST..$PORT_LAST; see $LOG"
            if ! port_busy "$port" && start_on "$port"; then
                break
            fi
            port=$((port + 1))
        done
        echo "$port" >"$DIR/port"
    fi
    create_db "$port" || die "cannot create database $DBNAME; see $LOG"
    echo "postgres://postgres@127.0.0.1:$port/$DBNAME" >"$DIR/url"
    trap - EXIT INT TERM HUP
    print_url
}

do_stop() { # mode
    [ -f "$DATA/postmaster.pid" ] || return 0
    as_pg "$PGBIN/pg_ctl" -D "$DATA" -m "$1" -w -t 60 stop >/dev/null ||
        die "pg_ctl stop failed; see $LOG"
}

case $cmd in
start) do_start ;;
stop) do_stop immediate ;;
restart)
    [ -f "$DIR/port" ] || die "nothing was started in $DIR"
    do_stop fast
    KEEP_PORT=1 do_start
    ;;
*) usage ;;
esac
