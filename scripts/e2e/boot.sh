#!/bin/bash
# One simulated boot: cloud-init's four stages, in order, chrooted into an instance root.
#
#   unshare --mount --uts --ipc --pid --fork --kill-child --mount-proc=ROOT/proc \
#       scripts/e2e/boot.sh ROOT OUTDIR [HOSTNAME]
#
# Run it inside fresh mount, UTS, IPC and PID namespaces (and the network namespace of the local
# AWS stack), as the e2e harness does: the mounts below then vanish with the namespace, and every
# process a stage leaves behind is killed when this script, PID 1 there, exits.
#
# Like a real boot, /run is a fresh tmpfs shared by all four stages; /var/lib/cloud and /var/log
# persist in ROOT between boots. For each stage OUTDIR gets STAGE.out (its stdout and stderr) and
# a line "STAGE RC START END" in OUTDIR/stages; then `cloud-init status --long` goes to
# OUTDIR/status.out (its exit code in OUTDIR/status.rc) and /run/cloud-init is copied to
# OUTDIR/run-cloud-init. Exits 0 when it could run the stages, whatever they returned.
set -euo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

[ $# -ge 2 ] && [ $# -le 3 ] || {
    echo "usage: boot.sh ROOT OUTDIR [HOSTNAME]" >&2
    exit 2
}
root="$1"
out="$2"
[ -x "$root/usr/bin/cloud-init" ] || {
    echo "boot.sh: $root has no cloud-init" >&2
    exit 2
}
mkdir -p "$out"
: >"$out/stages"

if [ $# -ge 3 ]; then
    hostname "$3"
fi
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$root/run"
mkdir -p "$root/run/lock"

# /sys: a read-only view of this network namespace's devices (cloud-init lists /sys/class/net)
# and an EC2-looking DMI, which a VM host here may lack and cloud-init 20.4 warns about.
# SEALBOOT_DMI_UUID sets product_uuid and product_serial (EC2 instances: both "ec2...").
mount -t tmpfs -o mode=0755,nosuid,nodev,noexec tmpfs "$root/sys"
sysfs="$out/.sysfs"
mkdir "$sysfs"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$sysfs"
for dir in devices class/net bus; do
    mkdir -p "$root/sys/$dir"
    mount --bind -o ro "$sysfs/$dir" "$root/sys/$dir"
done
umount "$sysfs"
rmdir "$sysfs"
dmi="$root/sys/class/dmi/id"
mkdir -p "$dmi"
uuid="${SEALBOOT_DMI_UUID:-ec2e2e00-0000-4000-8000-000000000000}"
printf '%s\n' "$uuid" >"$dmi/product_uuid"
printf '%s\n' "$uuid" >"$dmi/product_serial"
printf 'Amazon EC2\n' >"$dmi/sys_vendor"
printf 'Amazon EC2\n' >"$dmi/board_vendor"
printf 'Amazon EC2\n' >"$dmi/chassis_asset_tag"
printf 'Amazon EC2\n' >"$dmi/chassis_vendor"
printf 't3.small\n' >"$dmi/product_name"
# cloud-init 26.x asks systemd-detect-virt, which sees no VM in a chroot, and then believes only
# a Xen-style /sys/hypervisor/uuid starting with "ec2": without it, EC2 crawls IMDS without a
# token, which the strict IMDSv2 emulator refuses (as EC2 does when IMDSv2 is required).
mkdir -p "$root/sys/hypervisor"
printf '%s\n' "$uuid" >"$root/sys/hypervisor/uuid"
mount -o remount,ro "$root/sys"

now() { date +%s.%N; }

in_root() {
    chroot "$root" env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        LANG=C.UTF-8 TERM=dumb "$@"
}

stage() {
    local name="$1" start rc
    shift
    start="$(now)"
    rc=0
    in_root "$@" </dev/null >"$out/$name.out" 2>&1 || rc=$?
    printf '%s %s %s %s\n' "$name" "$rc" "$start" "$(now)" >>"$out/stages"
}

stage init-local cloud-init init --local
stage init cloud-init init
stage modules-config cloud-init modules --mode config
stage modules-final cloud-init modules --mode final

rc=0
in_root cloud-init status --long </dev/null >"$out/status.out" 2>&1 || rc=$?
printf '%s\n' "$rc" >"$out/status.rc"
if [ -d "$root/run/cloud-init" ]; then
    cp -a "$root/run/cloud-init" "$out/run-cloud-init"
fi
