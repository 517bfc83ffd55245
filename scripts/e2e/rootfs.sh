#!/bin/bash
# Build, or reuse from the cache, a Debian rootfs with real cloud-init for the e2e tests.
#
#   scripts/e2e/rootfs.sh SUITE[+PKG,...] [DEST]
#
# SUITE is a Debian codename (bullseye, bookworm, trixie, sid). DEST defaults to
# ${SEALBOOT_CACHE:-/var/cache/sealboot}/rootfs/SUITE, outside the repository, so a second run
# costs nothing. The rootfs is built in a temporary directory next to DEST and renamed into place
# only when complete; a stamp file inside it records what it was built from (suite, mirror,
# package list, cloud-init configuration), and a changed recipe rebuilds it. Tests never write to
# it: each simulated instance mounts an overlayfs over it.
#
# Environment:
#   SEALBOOT_CACHE          cache root (default /var/cache/sealboot)
#   SEALBOOT_DEBIAN_MIRROR  Debian mirror (default http://deb.debian.org/debian)
#
# Needs root. Installs debootstrap with apt-get when it is missing. Prints DEST on stdout.
set -euo pipefail
# debootstrap and chroot live in sbin, which a CI or sudo PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"

# Bump when the build steps below change in a way the stamp would not otherwise notice.
RECIPE_VERSION=1

# What cloud-init needs to run its four stages in a chroot. debootstrap does not resolve virtual
# packages, so python3-cryptography's python3-cffi-backend-api-* must be named as the real package.
# iproute2: cloud-init 25.1 no longer depends on it, yet warns (status "degraded") without `ip`.
PACKAGES=(cloud-init python3-cffi-backend iproute2)

say() { printf 'rootfs.sh: %s\n' "$*" >&2; }
die() {
    say "ERROR: $*"
    exit 1
}

usage() {
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

[ $# -ge 1 ] && [ $# -le 2 ] || usage
# NAME is a codename, optionally with extra packages: bookworm+awscli (an image without the agent
# but with the AWS CLI, for the boothook's fallback path).
name="$1"
case "$name" in
    -h | --help) usage ;;
    *[!a-z0-9+,.-]* | "" | +*) die "'$name' is not a Debian codename (optionally +pkg,pkg)" ;;
esac
suite="${name%%+*}"
if [ "$name" != "$suite" ]; then
    IFS=, read -r -a extra <<<"${name#*+}"
    PACKAGES+=("${extra[@]}")
fi
cache="${SEALBOOT_CACHE:-/var/cache/sealboot}"
dest="${2:-$cache/rootfs/$name}"
mirror="${SEALBOOT_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot)"

# The cloud-init configuration baked into the rootfs. Keep it a pure function of nothing, so its
# hash can go into the stamp.
cloud_cfg() {
    cat <<'EOF'
# sealboot e2e: cloud-init runs in a chroot on a developer's or CI's machine. Nothing may touch
# the host: no network configuration, no hostname, no users, no package installs. User data comes
# from the NoCloud seed directory /var/lib/cloud/seed/nocloud/ that each test writes.
datasource_list: [NoCloud, None]
network: {config: disabled}
preserve_hostname: true
manage_etc_hosts: false
cloud_init_modules:
  - bootcmd
  - write_files
cloud_config_modules:
  - runcmd
cloud_final_modules:
  - scripts_per_once
  - scripts_per_boot
  - scripts_per_instance
  - scripts_user
  - final_message
EOF
}

stamp() {
    local include
    include="$(IFS=,; printf '%s' "${PACKAGES[*]}")"
    printf 'recipe: %s\nsuite: %s\nmirror: %s\nvariant: minbase\ninclude: %s\ncloud-cfg: %s\n' \
        "$RECIPE_VERSION" "$suite" "$mirror" "$include" "$(cloud_cfg | sha256sum | cut -d' ' -f1)"
}

STAMP_NAME=.sealboot-rootfs
want="$(stamp)"

parent="$(dirname "$dest")"
mkdir -p "$parent"
# One builder per destination at a time; a second caller waits and then finds it cached.
exec 9>"$parent/.$(basename "$dest").lock"
flock 9

if [ -f "$dest/$STAMP_NAME" ] && [ "$(cat "$dest/$STAMP_NAME")" = "$want" ]; then
    say "$name: cached at $dest"
    printf '%s\n' "$dest"
    exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    say "installing debootstrap with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq debootstrap >/dev/null
fi

tmp="$(mktemp -d "$parent/.build-$suite.XXXXXX")"
chmod 755 "$tmp"
old=""
unmount_under() {
    # debootstrap mounts proc and sys inside the target; never rm -rf through a mount.
    local mnt
    while read -r mnt; do
        umount -l "$mnt" 2>/dev/null || true
    done < <(awk -v p="$1/" 'index($2, p) == 1 { print $2 }' /proc/self/mounts | sort -r)
}
cleanup() {
    local rc=$?
    for dir in "$tmp" "$old"; do
        if [ -n "$dir" ] && [ -d "$dir" ]; then
            unmount_under "$dir"
            rm -rf --one-file-system "$dir"
        fi
    done
    exit "$rc"
}
trap cleanup EXIT

start=$SECONDS
say "$suite: debootstrap from $mirror into $tmp (this takes a minute or two)"
include="$(IFS=,; printf '%s' "${PACKAGES[*]}")"
if ! debootstrap --variant=minbase --include="$include" "$suite" "$tmp" "$mirror" \
    >"$tmp.log" 2>&1; then
    tail -n 30 "$tmp.log" >&2 || true
    rm -f "$tmp.log"
    die "debootstrap of '$suite' from $mirror failed (does the mirror serve it?)"
fi
rm -f "$tmp.log"

# Configure: no host-touching cloud-init, NoCloud seed directory, an empty apt cache.
cloud_cfg >"$tmp/etc/cloud/cloud.cfg.d/95-sealboot-e2e.cfg"
mkdir -p "$tmp/var/lib/cloud/seed/nocloud"
rm -rf "${tmp:?}/var/cache/apt/archives/"*.deb "${tmp:?}/var/lib/apt/lists/"*_Packages
# No instance has booted in the image: like an AMI after `cloud-init clean`.
rm -rf "${tmp:?}/var/lib/cloud/instances" "${tmp:?}/var/lib/cloud/instance" \
    "${tmp:?}/var/log/cloud-init"*.log

{
    printf '%s\n' "$want"
    # shellcheck disable=SC2016 # dpkg-query's format, not a shell expansion
    printf 'cloud-init: %s\n' "$(chroot "$tmp" dpkg-query -W -f='${Version}' cloud-init)"
    printf 'python3: %s\n' "$(chroot "$tmp" python3 -c 'import platform; print(platform.python_version())')"
} >"$tmp/$STAMP_NAME.info"
printf '%s\n' "$want" >"$tmp/$STAMP_NAME"

if [ -e "$dest" ]; then
    old="$(mktemp -d "$parent/.old-$suite.XXXXXX")"
    mv -T "$dest" "$old/rootfs"
fi
mv -T "$tmp" "$dest"
tmp=""
say "$suite: built in $((SECONDS - start))s, $(du -sh --one-file-system "$dest" | cut -f1) at $dest"
sed 's/^/rootfs.sh:   /' "$dest/$STAMP_NAME.info" | tail -n 2 >&2
printf '%s\n' "$dest"
