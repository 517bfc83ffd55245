#!/bin/sh
# Install sealboot-agent into a machine image. This is the ONE install step: Packer's shell
# provisioner, the image-builder role, the .deb/.rpm maintainer scripts and the image tests all
# run it.
#
#   install.sh [--root DIR] [--python PATH] [ARTIFACT]   install ARTIFACT, then prepare it
#   install.sh [--root DIR] [--python PATH] --prepare    only prepare the installed artifact
#   install.sh [--python PATH] --print-wrapper           print /usr/sbin/sealboot-agent
#
# ARTIFACT   sealboot-agent.pyz from `make dist` (default /tmp/sealboot-agent.pyz, where the
#            Packer example uploads it).
# --root DIR install into the image mounted at DIR instead of /; DIR's own PYTHON runs every
#            check there (chroot).
# --python   the interpreter the agent runs on (default /usr/bin/python3): CPython 3.9 or newer.
# --prepare  what the packages run after unpacking: check PYTHON, drop extractions of other
#            builds, pre-extract and byte-compile the artifact, run its self-check.
# --no-datasource  do not enable the sealboot cloud-init datasource (by default it is enabled
#            when cloud-init 20.4+ is installed; the boothook hand-off works either way).
#
# Result, everything owned by root:
#   /usr/lib/sealboot/sealboot-agent.pyz  0755  the agent and its pinned pure-Python dependencies
#   /usr/sbin/sealboot-agent              0755  runs the artifact on PYTHON -I -S
#   /var/cache/sealboot-agent/            0755  the artifact's dependencies, extracted once and
#                                               compiled for PYTHON, so the first boot pays nothing
#                                               (if it is wiped, the agent re-extracts on its next run)
#
# Idempotent: a second run with the same artifact changes nothing; a new artifact replaces the old
# one and its extraction. Needs root. Exit codes: 0 installed, 2 bad usage, 3 no supported python
# (missing, not CPython, or older than 3.9), 1 anything else.
set -eu
umask 022
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH

LIB_DIR=/usr/lib/sealboot
PYZ="$LIB_DIR/sealboot-agent.pyz"
WRAPPER=/usr/sbin/sealboot-agent
# shiv's root, baked into the artifact by packaging/build_dist.py (`shiv --root`); checked below.
CACHE_DIR=/var/cache/sealboot-agent
MIN_PYTHON=3.9
NEWEST_TESTED=3.13
placed=""

root=/
python=/usr/bin/python3
artifact=/tmp/sealboot-agent.pyz
mode=install
datasource=yes

say() { printf 'sealboot install: %s\n' "$*" >&2; }
die() {
    code="$1"
    shift
    say "ERROR: $*"
    exit "$code"
}
usage() {
    sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit "${1:-2}"
}

# -I -S: only the standard library and the artifact's own pinned dependencies are importable.
# Without -S the image's site-packages come after them, and botocore and urllib3 pick up
# optional extras found there (awscrt and cryptography from the distribution's awscli and
# cloud-init): code we never tested, and 0.1 s more on every boot.
print_wrapper() {
    cat <<EOF
#!/bin/sh
# sealboot-agent: the single-file agent ($PYZ) on this image's Python.
# Installed by sealboot's packaging/install.sh; its dependencies are extracted in $CACHE_DIR.
exec $python -I -S $PYZ "\$@"
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --root)
            [ $# -ge 2 ] || usage
            root="$2"
            shift 2
            ;;
        --root=*)
            root="${1#--root=}"
            shift
            ;;
        --python)
            [ $# -ge 2 ] || usage
            python="$2"
            shift 2
            ;;
        --python=*)
            python="${1#--python=}"
            shift
            ;;
        --prepare)
            mode=prepare
            shift
            ;;
        --no-datasource)
            datasource=no
            shift
            ;;
        --print-wrapper)
            mode=print-wrapper
            shift
            ;;
        -h | --help) usage 0 ;;
        -*) die 2 "unknown option $1 (see --help)" ;;
        *)
            artifact="$1"
            shift
            [ $# -eq 0 ] || die 2 "one ARTIFACT only, got also: $*"
            ;;
    esac
done

case "$python" in
    /*) ;;
    *) die 2 "--python must be an absolute path, not '$python'" ;;
esac
case "$python" in
    *[!A-Za-z0-9/._+-]*) die 2 "--python '$python' has characters that do not belong in a path" ;;
esac

if [ "$mode" = print-wrapper ]; then
    print_wrapper
    exit 0
fi

[ "$(id -u)" = 0 ] || die 1 "must run as root (it installs into /usr and /var)"
case "$root" in
    /*) ;;
    *) root="$(pwd)/$root" ;;
esac
root="${root%/}"
[ -z "$root" ] || [ -d "$root" ] || die 2 "--root $root is not a directory"

# A path inside the target, as seen from here.
at() { printf '%s%s' "$root" "$1"; }

# Run a command in the target system, with a clean environment. Extra NAME=VALUE arguments
# first, then the command.
in_target() {
    if [ -z "$root" ]; then
        env -i PATH="$PATH" LANG=C.UTF-8 "$@"
    else
        chroot "$root" /usr/bin/env -i PATH="$PATH" LANG=C.UTF-8 "$@"
    fi
}

# --- the interpreter ---------------------------------------------------------------------------

# 3.9 -> 309, as the probe below prints it.
version_number() {
    echo "$((${1%%.*} * 100 + ${1#*.}))"
}

check_python() {
    where="${root:-/}"
    # -L too: an absolute symlink resolves only inside the target.
    if [ ! -e "$(at "$python")" ] && [ ! -L "$(at "$python")" ]; then
        die 3 "there is no $python in $where: sealboot-agent needs CPython $MIN_PYTHON or newer" \
            "(install python3, or point --python at one)"
    fi
    # The oldest interpreters do not know -I; their error is reported as is. The marked line
    # is found among whatever else the interpreter prints (warnings).
    # shellcheck disable=SC2016 # Python code, not shell
    probe='import platform, sys
print("sealboot-python:", platform.python_implementation(), platform.python_version(),
      sys.version_info[0] * 100 + sys.version_info[1])'
    if ! out="$(in_target "$python" -I -c "$probe" 2>&1)"; then
        die 3 "$python in $where does not run: $out" \
            "(sealboot-agent needs CPython $MIN_PYTHON or newer)"
    fi
    info="$(printf '%s\n' "$out" | sed -n 's/^sealboot-python: //p')"
    impl="${info%% *}"
    rest="${info#* }"
    py_version="${rest%% *}"
    py_number="${rest#* }"
    case "$py_number" in
        '' | *[!0-9]*) die 3 "cannot read the version of $python in $where: $out" ;;
    esac
    [ "$impl" = CPython ] || die 3 "$python in $where is $impl $py_version; sealboot-agent needs CPython"
    if [ "$py_number" -lt "$(version_number "$MIN_PYTHON")" ]; then
        die 3 "$python in $where is Python $py_version; sealboot-agent needs $MIN_PYTHON or newer" \
            "(Amazon Linux 2023, RHEL 9, Debian 11, Ubuntu 22.04 and later have it)"
    fi
    if [ "$py_number" -gt "$(version_number "$NEWEST_TESTED")" ]; then
        say "WARNING: Python $py_version is newer than the newest tested ($NEWEST_TESTED); continuing"
    fi
}

# "BUILD_ID ROOT" of an artifact inside the target, read with the target's Python.
artifact_identity() {
    # shellcheck disable=SC2016 # Python code, not shell
    in_target "$python" -I -c 'import json, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    env = json.loads(z.read("environment.json"))
print(env["build_id"], env.get("root") or "-")' "$1"
}

# --- install the artifact and the wrapper ------------------------------------------------------

# Put SRC at DEST (a target path) as root:root 0755, atomically; keep DEST when identical.
# Sets $placed to "installed" or "unchanged". (No subshell: `set -e` holds throughout.)
place() {
    src="$1"
    dest="$(at "$2")"
    if [ -f "$dest" ] && [ "$(sha256sum <"$src")" = "$(sha256sum <"$dest")" ]; then
        chown 0:0 "$dest"
        chmod 0755 "$dest"
        placed=unchanged
        return 0
    fi
    tmp="$dest.sealboot-new"
    cp "$src" "$tmp"
    chown 0:0 "$tmp"
    chmod 0755 "$tmp"
    if [ "$2" = "$PYZ" ]; then
        # Check what is about to replace the artifact with the target's own Python.
        if ! ident="$(artifact_identity "$PYZ.sealboot-new" 2>&1)"; then
            rm -f "$tmp"
            die 1 "$src is not a sealboot-agent.pyz built by 'make dist': $ident"
        fi
        if [ "${ident#* }" != "$CACHE_DIR" ]; then
            rm -f "$tmp"
            die 1 "$src unpacks into '${ident#* }', not $CACHE_DIR: rebuild it with 'make dist'"
        fi
    fi
    mv -f "$tmp" "$dest"
    placed=installed
}

install_files() {
    [ -f "$artifact" ] || die 2 "no artifact at $artifact (build it with 'make dist')"
    mkdir -p "$(at "$LIB_DIR")" "$(at "$(dirname "$WRAPPER")")"
    chmod 0755 "$(at "$LIB_DIR")"
    place "$artifact" "$PYZ"
    say "$PYZ: $placed"
    wrapper_src="$(mktemp)"
    print_wrapper >"$wrapper_src"
    place "$wrapper_src" "$WRAPPER"
    rm -f "$wrapper_src"
    say "$WRAPPER: $placed"
}

# The sealboot datasource (the preferred mode): its package goes next to cloud-init's own, and a
# cloud.cfg.d drop-in enables it. The boothook hand-off needs none of this; without cloud-init,
# or with --no-datasource, only the boothook path is used.
DS_CFG=/etc/cloud/cloud.cfg.d/96-sealboot-datasource.cfg
MIN_CLOUD_INIT=20.4

install_cloud_init_config() {
    if [ "$datasource" = no ]; then
        rm -f "$(at "$DS_CFG")"
        say "datasource: not enabled (--no-datasource); the boothook hand-off is used"
        return 0
    fi
    # shellcheck disable=SC2016 # Python code, not shell
    if ! ci="$(in_target "$python" -I -c 'import os, cloudinit.version as v
print(v.version_string(), os.path.dirname(os.path.dirname(v.__file__)))' 2>/dev/null)"; then
        rm -f "$(at "$DS_CFG")"
        say "datasource: cloud-init is not installed for $python; the boothook hand-off is used"
        return 0
    fi
    ci_version="${ci%% *}"
    ci_site="${ci#* }"
    ci_major="${ci_version%%.*}"
    ci_minor="${ci_version#*.}"
    ci_minor="${ci_minor%%.*}"
    case "$ci_major$ci_minor" in
        '' | *[!0-9]*) die 1 "cannot read cloud-init's version: $ci" ;;
    esac
    if [ "$((ci_major * 100 + ci_minor))" -lt "$(version_number "$MIN_CLOUD_INIT")" ]; then
        die 3 "cloud-init $ci_version is older than $MIN_CLOUD_INIT, the oldest the sealboot" \
            "datasource supports; rerun with --no-datasource to use the boothook hand-off only"
    fi
    # Copy the datasource package out of the artifact, with the target's own Python.
    # shellcheck disable=SC2016 # Python code, not shell
    in_target "$python" -I -c 'import os, sys, zipfile
dest = os.path.join(sys.argv[2], "sealboot_cloudinit")
os.makedirs(dest, exist_ok=True)
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in z.namelist():
        if name.startswith("site-packages/sealboot_cloudinit/") and name.endswith(".py"):
            path = os.path.join(dest, os.path.basename(name))
            data = z.read(name)
            try:
                with open(path, "rb") as fh:
                    if fh.read() == data:
                        continue  # idempotent: leave an identical file as it is
            except OSError:
                pass
            with open(path + ".new", "wb") as fh:
                fh.write(data)
            os.chmod(path + ".new", 0o644)
            os.replace(path + ".new", path)' "$PYZ" "$ci_site"
    mkdir -p "$(at "$(dirname "$DS_CFG")")"
    cat >"$(at "$DS_CFG").sealboot-new" <<'EOF'
# sealboot: the sealboot datasource (EC2, with sealed user data unsealed before cloud-init reads
# it). Keep datasource_list exactly like this: ds-identify knows no other check for it.
# Settings for the EC2 side stay under datasource: {Ec2: ...}.
datasource_list: [Sealboot, None]
datasource_pkg_list: [sealboot_cloudinit]
EOF
    if cmp -s "$(at "$DS_CFG").sealboot-new" "$(at "$DS_CFG")"; then
        rm -f "$(at "$DS_CFG").sealboot-new"
    else
        chmod 0644 "$(at "$DS_CFG").sealboot-new"
        mv -f "$(at "$DS_CFG").sealboot-new" "$(at "$DS_CFG")"
    fi
    say "datasource: enabled for cloud-init $ci_version ($ci_site/sealboot_cloudinit, $DS_CFG)"
}

# --- prepare: pre-extract and compile for this Python --------------------------------------------

prepare() {
    [ -f "$(at "$PYZ")" ] || die 1 "$PYZ is not installed in ${root:-/}"
    [ -x "$(at "$WRAPPER")" ] || die 1 "$WRAPPER is not installed in ${root:-/}"
    ident="$(artifact_identity "$PYZ")" || die 1 "cannot read $PYZ with $python"
    build_id="${ident%% *}"
    [ "${ident#* }" = "$CACHE_DIR" ] || die 1 "$PYZ unpacks into '${ident#* }', not $CACHE_DIR"
    name="$(basename "$PYZ")_$build_id"

    cache="$(at "$CACHE_DIR")"
    mkdir -p "$cache"
    chown 0:0 "$cache"
    chmod 0755 "$cache"
    # Extractions of other builds (an older artifact) and their locks, half-done extractions.
    for entry in "$cache"/* "$cache"/.[!.]*; do
        [ -e "$entry" ] || [ -L "$entry" ] || continue
        case "${entry##*/}" in
            "$name" | ".${name}_lock") ;;
            *)
                say "removing $CACHE_DIR/${entry##*/} (not this build)"
                rm -rf "$entry"
                ;;
        esac
    done

    # The first run extracts the dependencies (shiv); then this Python compiles them, so that
    # neither happens at boot.
    if ! version="$(in_target "$WRAPPER" --version 2>&1)"; then
        die 1 "$WRAPPER --version failed on Python $py_version: $version"
    fi
    site="$CACHE_DIR/$name/site-packages"
    [ -d "$(at "$site")" ] || die 1 "running the agent did not extract it into $site"
    if ! out="$(in_target "$python" -I -m compileall -q "$site" 2>&1)"; then
        die 1 "Python $py_version cannot compile the agent's dependencies: $out"
    fi
    chown -R 0:0 "$cache"

    # Self-check on this Python: the agent's modules import, and botocore can build a client for
    # every service model the artifact carries (offline; no request is made).
    # shellcheck disable=SC2016 # Python code, not shell
    check='import botocore.session, requests, sealboot_agent.cli
session = botocore.session.get_session()
names = session.get_available_services()
for name in names:
    session.create_client(name, region_name="us-east-1", aws_access_key_id="AKIDEXAMPLE",
                          aws_secret_access_key="example")
print(" ".join(names))'
    if ! services="$(in_target SHIV_INTERPRETER=1 "$python" -I -S "$PYZ" -c "$check" 2>&1)"; then
        die 1 "self-check of $PYZ on Python $py_version failed: $services"
    fi

    size_pyz="$(du -sk "$(at "$PYZ")" | cut -f1)"
    size_site="$(du -sk "$(at "$CACHE_DIR/$name")" | cut -f1)"
    say "$version on CPython $py_version ($python) in ${root:-/}: AWS services [$services];" \
        "installed size $((size_pyz + size_site)) KiB ($PYZ $size_pyz KiB + extracted $size_site KiB)"
}

check_python
if [ "$mode" = install ]; then
    install_files
fi
install_cloud_init_config
prepare
