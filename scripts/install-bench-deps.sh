#!/bin/sh
# Installs the Debian 12 packages that bench/load.sh needs (nginx, the
# baseline proxy and the upstream; wrk, the load generator), and nothing else.
# A no-op (no apt-get call at all) when both are present. Run as root, or as a
# user with sudo.
#
# nginx is installed without being started: bench/load.sh runs its own
# nginx processes on loopback ports, as the calling user, and a system nginx
# listening on port 80 is not wanted on a build machine. Debian's
# policy-rc.d mechanism (exit status 101: "action forbidden") keeps the
# package's postinst from starting it; the file is removed afterwards unless
# it was there before.
set -eu

PACKAGES="nginx wrk"

missing=""
for p in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing="$missing $p"
    fi
done
[ -z "$missing" ] && exit 0

echo "install-bench-deps: installing:$missing" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "install-bench-deps: need root or sudo to install:$missing" >&2; exit 1; }
    SUDO="sudo"
fi

policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# bench deps: do not start services while installing\nexit 101\n' |
        $SUDO tee "$policy" >/dev/null
    $SUDO chmod 755 "$policy"
    own_policy=1
fi
cleanup() {
    if [ "$own_policy" -eq 1 ]; then
        $SUDO rm -f "$policy"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
