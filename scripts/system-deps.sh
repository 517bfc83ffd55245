#!/bin/bash
# Install the Debian packages the tests use, when they are missing:
#   awscli       the boothook's fallback path is tested with the real AWS CLI v2 (Debian's is v2;
#                a pip-installed v1 elsewhere on PATH does not count)
#   debootstrap  builds the Debian rootfs images of tests/e2e and tests/image
#   rpm          `rpm -qp` reads the built .rpm and installs it into a scratch root
#   packer       `packer validate -syntax-only` parses the HCL2 template with Packer's own parser
#                (Debian's 1.6.6 predates the amazon plugin's newer fields; tests/image checks the
#                structure with python-hcl2)
# As root it uses apt-get; otherwise it says what to install and fails.
set -euo pipefail
want=()
[ -x /usr/bin/aws ] || want+=(awscli)
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || want+=(debootstrap)
command -v rpm >/dev/null || want+=(rpm)
command -v packer >/dev/null || want+=(packer)
[ ${#want[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "system-deps: please install: ${want[*]} (apt-get install ${want[*]})" >&2
    exit 1
fi
echo "system-deps: installing ${want[*]} with apt-get" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
