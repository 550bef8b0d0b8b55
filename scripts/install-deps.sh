#!/bin/sh
# Installs the Debian 12 packages phigate needs to build, test and run, and
# nothing else. A no-op (no apt-get call at all) when every package is present.
# Run as root, or as a user with sudo.
set -eu

PACKAGES="build-essential cmake pkg-config
libssl-dev libevent-dev libsqlite3-dev libpq-dev libhiredis-dev libjansson-dev
libinih-dev libcmocka-dev libsystemd-dev zlib1g-dev
postgresql-15 redis-server
python3 python3-pytest python3-cryptography"

missing=""
for p in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing="$missing $p"
    fi
done
[ -z "$missing" ] && exit 0

echo "install-deps: installing:$missing" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "install-deps: need root or sudo to install:$missing" >&2; exit 1; }
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
