#!/bin/bash
# Install the Debian packages that the packaging tests (tests/image) use, when they are missing:
#   rpm     `rpm -qp` reads the built .rpm's file list, metadata and scripts, and installs it
#           into a scratch root (the real rpm tool, not a parser of our own)
#   packer  `packer validate -syntax-only` parses the HCL2 template with Packer's own parser
#           (Debian's 1.6.6 is too old to know the amazon plugin's newer fields, so only the
#           syntax check is used; tests/image checks the structure with python-hcl2)
# Same rules as scripts/system-deps.sh: apt-get as root, else a clear request to install them.
set -euo pipefail
want=()
command -v rpm >/dev/null || want+=(rpm)
command -v packer >/dev/null || want+=(packer)
[ ${#want[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "packaging/system-deps.sh: please install: ${want[*]} (apt-get install ${want[*]})" >&2
    exit 1
fi
echo "packaging/system-deps.sh: installing ${want[*]} with apt-get" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
