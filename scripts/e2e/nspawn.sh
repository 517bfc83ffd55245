#!/bin/bash
# Provide systemd-nspawn for the real-systemd e2e boots without installing anything on the host.
#
#   scripts/e2e/nspawn.sh
#
# Installing the systemd-container package would upgrade the host's systemd along with it. So
# `apt-get download` fetches the package matching the host's systemd version and `dpkg -x`
# unpacks it into ${SEALBOOT_CACHE:-/var/cache/sealboot}/nspawn/VERSION, outside the repository.
# The unpacked binary runs against the host's own libsystemd-shared. A second run costs nothing.
# A systemd-nspawn already on PATH is used as it is.
#
# Needs root only to fill the cache. Prints the absolute path of systemd-nspawn on stdout.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

say() { printf 'nspawn.sh: %s\n' "$*" >&2; }
die() {
    say "ERROR: $*"
    exit 1
}

if found="$(command -v systemd-nspawn)"; then
    printf '%s\n' "$found"
    exit 0
fi

# The host's libsystemd-shared-NNN.so comes with its systemd package; nspawn must match it.
# shellcheck disable=SC2016 # dpkg-query's format, not a shell expansion
version="$(dpkg-query -W -f='${Version}' systemd 2>/dev/null)" ||
    die "the host has no systemd package; systemd-nspawn needs its libsystemd-shared"
[ -n "$version" ] || die "the host's systemd package is not installed"
cache="${SEALBOOT_CACHE:-/var/cache/sealboot}/nspawn"
dest="$cache/$version"
bin="$dest/usr/bin/systemd-nspawn"

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9

if [ -x "$bin" ]; then
    printf '%s\n' "$bin"
    exit 0
fi

tmp="$(mktemp -d "$cache/.unpack.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
say "downloading systemd-container=$version (apt-get download; nothing is installed)"
# apt-get download writes into the current directory as _apt when it can (sandboxed fetch).
chmod 755 "$tmp"
chown _apt "$tmp" 2>/dev/null || true
if ! (cd "$tmp" && apt-get download -qq "systemd-container=$version") >&2; then
    say "not in the package lists; apt-get update, then try again"
    apt-get update -qq >&2
    (cd "$tmp" && apt-get download -qq "systemd-container=$version") >&2 ||
        die "apt-get download systemd-container=$version failed (is a Debian mirror reachable?)"
fi
deb="$(find "$tmp" -maxdepth 1 -name 'systemd-container_*.deb' -print -quit)"
[ -n "$deb" ] || die "apt-get download left no systemd-container .deb in $tmp"
dpkg -x "$deb" "$tmp/root"
[ -x "$tmp/root/usr/bin/systemd-nspawn" ] || die "$deb holds no usr/bin/systemd-nspawn"
"$tmp/root/usr/bin/systemd-nspawn" --version >/dev/null ||
    die "the unpacked systemd-nspawn does not run against the host's libraries"
mv -T "$tmp/root" "$dest"
say "systemd-nspawn $version unpacked at $dest"
printf '%s\n' "$bin"
