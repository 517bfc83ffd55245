#cloud-boothook
#!/bin/bash
# sealboot boothook @@VERSION@@: names sealed fragments; holds no secret.
# cloud-init runs boothooks on every boot; the done marker makes later runs a no-op.
set -u
umask 077

@@ASSIGNMENTS@@

# SEALBOOT_ROOT (empty on a real instance) lets tests run this script against a scratch root.
sb_root="${SEALBOOT_ROOT:-}"
mkdir -p "${sb_root}/var/log"
# cloud-init 22.4 throws boothook output away and 23.4+ tees it; appending here ourselves
# puts every line in cloud-init-output.log exactly once on both.
exec >>"${sb_root}/var/log/cloud-init-output.log" 2>&1

sb_say() {
    printf '%s sealboot-boothook[%s] %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$$" "$*"
}

if [ -e "${sb_root}/var/lib/sealboot/done/${SEALBOOT_ID}" ]; then
    sb_say "INFO: sealed user data already handed over on this instance; nothing to do"
    exit 0
fi

PATH="${PATH:-/usr/bin:/bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/sbin"
sb_agent="$(command -v sealboot-agent || true)"
if [ -z "$sb_agent" ]; then
    sb_cli="$(command -v aws || true)"
    if [ -n "$sb_cli" ] && [ -x "$sb_cli" ] && command -v python3 >/dev/null; then
        # The AWS CLI fallback: the agent's own user-data code (sealboot_agent.userdata and
        # .fallback, embedded by 'sealboot render'), with 'aws' to fetch and delete.
        sb_py="$(mktemp -d "${TMPDIR:-/tmp}/sealboot.XXXXXXXX")"
        mkdir "$sb_py/sealboot_agent" && : >"$sb_py/sealboot_agent/__init__.py"
        cat >"$sb_py/sealboot_agent/userdata.py" <<'SEALBOOT_USERDATA_PY'
@@USERDATA_PY@@
SEALBOOT_USERDATA_PY
        cat >"$sb_py/sealboot_agent/fallback.py" <<'SEALBOOT_FALLBACK_PY'
@@FALLBACK_PY@@
SEALBOOT_FALLBACK_PY
        sb_rc=0
        python3 -I -S -c 'import sys; sys.path.insert(0, sys.argv[1])
from sealboot_agent.fallback import main
sys.exit(main(sys.argv[2:]))' "$sb_py" "$SEALBOOT_MANIFEST" "$sb_root" "${INSTANCE_ID:-}" \
            "$SEALBOOT_ID" "${SEALBOOT_DEADLINE:-300}" "${SEALBOOT_IMDS_ENDPOINT:-}" || sb_rc=$?
        rm -rf "$sb_py"
        exit "$sb_rc"
    fi
    sb_say "ERROR: neither sealboot-agent nor the AWS CLI is installed on this image: the sealed" \
        "user data was not fetched and its fragments were left in place"
    sb_say "ERROR: what to do: bake the agent into the AMI (packaging/install.sh) and replace" \
        "this instance. exit 69"
    exit 69
fi

exec "$sb_agent" fetch --handoff "$SEALBOOT_HANDOFF" --manifest "$SEALBOOT_MANIFEST" \
    ${sb_root:+--root "$sb_root"}
