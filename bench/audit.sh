#!/usr/bin/env bash
# Runs `phigate bench audit` on SQLite and on a throwaway PostgreSQL 15 server
# (started here on a loopback port, stopped at the end). Prints figures only.
set -euo pipefail
cd "$(dirname "$0")/.."
make --no-print-directory build >/dev/null
dir=$(mktemp -d /tmp/phigate-bench-pg-XXXXXX)
chmod 755 "$dir"
trap 'tests/pg_server.sh stop "$dir" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
url=$(tests/pg_server.sh start "$dir")
./build/phigate bench audit --postgres "$url" "$@"
