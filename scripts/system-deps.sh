#!/bin/bash
# Install the Debian packages the tests use, when they are missing: the AWS CLI v2 (the
# boothook's fallback path is tested with the real thing) and debootstrap (e2e rootfs images).
set -euo pipefail
want=()
# Debian's awscli is AWS CLI v2; a pip-installed v1 elsewhere on PATH does not count.
[ -x /usr/bin/aws ] || want+=(awscli)
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || want+=(debootstrap)
[ ${#want[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "system-deps: please install: ${want[*]} (apt-get install ${want[*]})" >&2
    exit 1
fi
echo "system-deps: installing ${want[*]} with apt-get" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
