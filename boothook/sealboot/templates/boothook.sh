#cloud-boothook
#!/bin/bash
# sealboot boothook @@VERSION@@: names sealed fragments; holds no secret.
# cloud-init runs boothooks on every boot; the done marker makes later runs a no-op.
set -u
umask 077

@@ASSIGNMENTS@@

# SEALBOOT_ROOT (empty on a real instance) lets tests run this script against a scratch root.
sb_root="${SEALBOOT_ROOT:-}"
sb_log="${sb_root}/var/log/cloud-init-output.log"
mkdir -p "${sb_root}/var/log"
# cloud-init 22.4 throws boothook output away and 23.4+ tees it; appending here ourselves
# puts every line in cloud-init-output.log exactly once on both.
exec >>"$sb_log" 2>&1

sb_say() {
    printf '%s sealboot-boothook[%s] %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$$" "$*"
}

if [ -e "${sb_root}/var/lib/sealboot/done/${SEALBOOT_ID}" ]; then
    sb_say "INFO: sealed user data already handed over on this instance; nothing to do"
    exit 0
fi

# ---- AWS CLI fallback, for images without sealboot-agent. Same rules as the agent: stop on
# the first failure, verify the digest before anything is deleted, delete only after a durable
# write, never print a fragment's bytes.
sb_instance="${INSTANCE_ID:-}"
sb_state="${sb_root}/var/lib/sealboot"
sb_fail() {  # exit code, message, what to do
    sb_say "ERROR: $2"
    sb_say "ERROR: what to do: $3"
    sb_say "ERROR: exit $1"
    if [ -n "$sb_instance" ]; then
        local dir="${sb_root}/var/lib/cloud/instances/${sb_instance}/scripts"
        mkdir -p "$dir"
        printf '#!/bin/sh\necho %q >&2\nexit 1\n' "sealboot: $2 (exit $1)" >"$dir/sealboot-failed"
        chmod 0700 "$dir/sealboot-failed"
    fi
    rm -rf "${sb_work:-/nonexistent-sealboot}"
    exit "$1"
}

# One AWS CLI call with retries: throttling, 5xx and network errors back off with full jitter
# until the deadline; not-found and access-denied stop at once.
sb_aws() {  # out-file, what, aws args...
    local out="$1" what="$2" attempt=0 rc err delay
    shift 2
    while :; do
        rc=0
        aws "$@" --region "$SEALBOOT_REGION" ${SEALBOOT_ENDPOINT_URL:+--endpoint-url "$SEALBOOT_ENDPOINT_URL"} \
            >"$out" 2>"$sb_work/err" || rc=$?
        [ "$rc" -eq 0 ] && return 0
        err="$(tr -s '\n' ' ' <"$sb_work/err" | cut -c1-300)"
        case "$err" in
            *ResourceNotFoundException*|*ParameterNotFound*)
                sb_fail 4 "$what: does not exist ($err)" \
                    "re-seal the user data and replace the instance; the other fragments were left in place" ;;
            *AccessDenied*|*DecryptionFailure*)
                sb_fail 5 "$what: access denied ($err)" \
                    "grant the instance role secretsmanager:GetSecretValue and DeleteSecret on its fragments; nothing was deleted" ;;
            *Throttl*|*TooManyRequests*|*ServiceUnavailable*|*InternalServiceError*|*InternalFailure*|*"Could not connect"*|*"Connection was closed"*|*"Read timeout"*|*"Unable to locate credentials"*|*"Error when retrieving credentials"*) ;;
            *)
                sb_fail 7 "$what failed (exit $rc: $err)" "check the endpoint and region; nothing was deleted" ;;
        esac
        delay=$(( RANDOM % (1 << (attempt < 5 ? attempt : 5)) + 1 ))
        if [ $((SECONDS + delay)) -ge "$sb_deadline" ]; then
            sb_fail 7 "$what: gave up after $((attempt + 1)) attempt(s) at the deadline ($err)" \
                "AWS throttled or was unreachable; nothing was deleted. Run the boothook again"
        fi
        sleep "$delay"
        attempt=$((attempt + 1))
    done
}

# Split the user data the way cloud-init would (python3 is always there with cloud-init) into
# numbered files in the staging directory, refusing what the hand-off cannot apply.
sb_split() {  # payload-file staging-dir
    python3 -I - "$1" "$2" <<'SEALBOOT_PY'
import email, email.policy, gzip, re, sys
src, out = sys.argv[1], sys.argv[2]
def gz(b):
    return gzip.decompress(b) if b[:2] == b"\x1f\x8b" else b
marks = [("#cloud-config-archive", None), ("#cloud-config", "cloud-config"),
         ("#cloud-boothook", "boothook"), ("#include", None), ("#part-handler", None),
         ("## template: jinja", None), ("#upstart-job", None), ("#!", "script")]
types = {"text/cloud-config": "cloud-config", "text/x-shellscript": "script",
         "text/cloud-boothook": "boothook"}
def kind(ctype, body, name, merge):
    if ctype == "text/plain":
        head = body.lstrip()[:64].decode("utf-8", "replace")
        ctype = next((m for m in marks if head.startswith(m[0])), (None, "?"))[1]
    else:
        ctype = types.get(ctype)
    if ctype in (None, "?"):
        sys.exit("part %s is not cloud-config, a shell script or a boothook" % name)
    if ctype == "cloud-config" and (merge or re.search(rb"^(merge_how|merge_type)\s*:", body, re.M)):
        sys.exit("part %s asks for a custom merge (merge_how)" % name)
    return ctype
data = gz(open(src, "rb").read())
parts = []
if re.match(rb"\s*(content-type:|mime-version:)", data[:512], re.I):
    for sub in email.message_from_bytes(data, policy=email.policy.compat32).walk():
        if not sub.is_multipart():
            body = gz(sub.get_payload(decode=True) or b"")
            name = sub.get_filename() or "part-%03d" % (len(parts) + 1)
            merge = sub.get("Merge-Type") or sub.get("X-Merge-Type")
            parts.append((kind(sub.get_content_type(), body, name, merge), name, body))
else:
    parts.append((kind("text/plain", data, "part-001", None), "part-001", data))
for i, (k, name, body) in enumerate(parts):
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:64]
    with open("%s/%02d.%s.%s" % (out, i, k, safe), "wb") as fh:
        fh.write(body)
SEALBOOT_PY
}

sb_fallback() {
    local n i frag ids rc size cap=$((16 * 1024 * 1024)) fields
    sb_deadline=$((SECONDS + ${SEALBOOT_DEADLINE:-300}))
    sb_work="$(mktemp -d "${TMPDIR:-/tmp}/sealboot.XXXXXXXX")"
    # The manifest was validated when it was sealed: no field can hold a newline.
    mapfile -t fields < <(python3 -I -c 'import json, sys
m = json.loads(sys.argv[1])
print("\n".join([m["backend"], str(m.get("use_fips", False)), m.get("region") or "",
                 m.get("endpoint_url") or "", m.get("sha256") or ""] + m["fragments"]))' \
        "$SEALBOOT_MANIFEST")
    sb_backend="${fields[0]:-}" SEALBOOT_REGION="${fields[2]:-}"
    SEALBOOT_ENDPOINT_URL="${fields[3]:-}" SEALBOOT_SHA256="${fields[4]:-}"
    SEALBOOT_FRAGMENTS=("${fields[@]:5}")
    if [ "${fields[1]:-}" = True ]; then
        export AWS_USE_FIPS_ENDPOINT=true
    fi
    n=${#SEALBOOT_FRAGMENTS[@]}
    [ "$n" -gt 0 ] || sb_fail 2 "the manifest could not be read" "re-render with 'sealboot render'"
    sb_say "INFO: sealboot-agent is not installed; fetching ${n} fragment(s) with the AWS CLI"
    [ -n "$SEALBOOT_REGION" ] || sb_fail 2 "the manifest names no region" "re-seal with --region"
    # Strict IMDSv2 for the instance-profile credentials; never IMDSv1.
    export AWS_EC2_METADATA_V1_DISABLED=true AWS_PAGER="" AWS_RETRY_MODE=standard AWS_MAX_ATTEMPTS=2
    if [ -n "${SEALBOOT_IMDS_ENDPOINT:-}" ]; then
        export AWS_EC2_METADATA_SERVICE_ENDPOINT="${SEALBOOT_IMDS_ENDPOINT%/}/"
    fi
    for ((i = 0; i < n; i++)); do
        frag="${SEALBOOT_FRAGMENTS[$i]}"
        if [ "$sb_backend" = ssm ]; then
            # SSM values are slices of one base64 text (as CAPA writes them): join, then decode.
            sb_aws "$sb_work/b64" "fragment $frag" ssm get-parameter --name "$frag" \
                --with-decryption --query Parameter.Value --output text
            tr -d '\n' <"$sb_work/b64" >>"$sb_work/text"
        else
            sb_aws "$sb_work/b64" "fragment $frag" secretsmanager get-secret-value \
                --secret-id "$frag" --query SecretBinary --output text
            base64 -d <"$sb_work/b64" >>"$sb_work/stream" ||
                sb_fail 6 "fragment $frag is not binary data" "re-seal; nothing was deleted"
        fi
    done
    if [ "$sb_backend" = ssm ]; then
        base64 -d <"$sb_work/text" >"$sb_work/stream" ||
            sb_fail 6 "the fragments are not base64 text" "re-seal; nothing was deleted"
    fi
    rm -f "$sb_work/b64" "$sb_work/text"
    if [ -n "$SEALBOOT_SHA256" ]; then
        read -r ids _ < <(sha256sum "$sb_work/stream")
        if [ "$ids" != "$SEALBOOT_SHA256" ]; then
            sb_fail 6 "sha256 of the reassembled fragments is $ids, the manifest says $SEALBOOT_SHA256" \
                "a fragment was changed; re-seal, and check who can write these secrets. Nothing was deleted"
        fi
        sb_say "INFO: verified sha256 $SEALBOOT_SHA256"
    fi
    rc=0
    gzip -dc <"$sb_work/stream" | head -c $((cap + 1)) >"$sb_work/userdata" || rc=$?
    size=$(stat -c %s "$sb_work/userdata")
    [ "$size" -le "$cap" ] || sb_fail 6 "user data is larger than the cap of $cap bytes" "nothing was deleted"
    [ "$rc" -eq 0 ] || sb_fail 6 "payload is not valid gzip" "re-seal; nothing was deleted"
    mkdir -p "$sb_work/parts"
    if ! sb_split "$sb_work/userdata" "$sb_work/parts" 2>"$sb_work/err"; then
        sb_fail 11 "$(tr -s '\n' ' ' <"$sb_work/err")" \
            "seal cloud-config, shell scripts or boothooks; nothing was deleted"
    fi
    mkdir -p "$sb_state"
    if ! { cp "$sb_work/userdata" "$sb_state/.userdata.tmp" && sync "$sb_state/.userdata.tmp" &&
        mv -f "$sb_state/.userdata.tmp" "$sb_state/userdata" && sync "$sb_state"; }; then
        sb_fail 8 "cannot write $sb_state/userdata durably" "free space; nothing was deleted"
    fi
    sb_say "INFO: wrote /var/lib/sealboot/userdata ($size bytes, mode 0600, synced)"
    for frag in "${SEALBOOT_FRAGMENTS[@]}"; do
        rc=0
        if [ "$sb_backend" = ssm ]; then
            aws ssm delete-parameter --name "$frag" --region "$SEALBOOT_REGION" \
                ${SEALBOOT_ENDPOINT_URL:+--endpoint-url "$SEALBOOT_ENDPOINT_URL"} \
                >/dev/null 2>"$sb_work/err" || rc=$?
        else
            aws secretsmanager delete-secret --secret-id "$frag" --force-delete-without-recovery \
                --region "$SEALBOOT_REGION" ${SEALBOOT_ENDPOINT_URL:+--endpoint-url "$SEALBOOT_ENDPOINT_URL"} \
                >/dev/null 2>"$sb_work/err" || rc=$?
        fi
        if [ "$rc" -ne 0 ] && ! grep -qE 'ResourceNotFoundException|ParameterNotFound' "$sb_work/err"; then
            sb_say "WARNING: could not delete $frag; remove it with 'sealboot delete'"
        fi
    done
    sb_say "INFO: deleted ${n} fragment(s)"
    sb_place
    mkdir -p "$sb_state/done" && : >"$sb_state/done/$SEALBOOT_ID"
    rm -rf "$sb_work"
    sb_say "INFO: done in ${SECONDS}s"
}

# Put each staged part where the rest of this boot looks (same layout as the agent).
sb_place() {
    local dir="${sb_root}/var/lib/cloud/instances/${sb_instance:-unknown}/scripts" part base idx
    local cfgdir="${sb_root}/etc/cloud/cloud.cfg.d" placed=()
    mkdir -p "$dir" "$cfgdir"
    for part in "$sb_work"/parts/*; do
        base="${part##*/}"
        idx="${base%%.*}"
        case "$base" in
            *.cloud-config.*)
                install -m 0600 "$part" "$cfgdir/99-sealboot-$idx.cfg"
                placed+=("/etc/cloud/cloud.cfg.d/99-sealboot-$idx.cfg")
                # cloud-init writes a sealed runcmd to scripts/runcmd; it has run by cleanup time.
                if grep -q '^runcmd[[:space:]]*:' "$part"; then
                    placed+=("${dir#"$sb_root"}/runcmd")
                fi ;;
            *.script.*)
                install -m 0700 "$part" "$dir/sealboot-$idx-${base#*.script.}"
                placed+=("${dir#"$sb_root"}/sealboot-$idx-${base#*.script.}") ;;
            *.boothook.*)
                sed '1{/^#cloud-boothook/d}' "$part" >"$sb_work/hook" && chmod 0700 "$sb_work/hook"
                (cd "${sb_root:-/}" && INSTANCE_ID="$sb_instance" "$sb_work/hook") ||
                    sb_say "WARNING: nested boothook ${base#*.boothook.} failed" ;;
        esac
    done
    {
        printf '#!/bin/sh\n# sealboot: the sealed user data has been used; do not leave it on disk.\n'
        printf 'rm -f --'
        printf ' %q' "${placed[@]}" /var/lib/sealboot/userdata "${dir#"$sb_root"}/zz-sealboot-cleanup"
        printf '\n'
    } >"$dir/zz-sealboot-cleanup"
    chmod 0700 "$dir/zz-sealboot-cleanup"
    rm -f "$dir/sealboot-failed"
    sb_say "INFO: hand-off cloud-init: ${#placed[@]} part(s) placed; plaintext removed after the final stage"
}

PATH="${PATH:-/usr/bin:/bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/sbin"
sb_agent="$(command -v sealboot-agent || true)"
if [ -z "$sb_agent" ]; then
    sb_cli="$(command -v aws || true)"
    if [ -n "$sb_cli" ] && [ -x "$sb_cli" ] && command -v python3 >/dev/null; then
        sb_fallback
        exit 0
    fi
    sb_say "ERROR: neither sealboot-agent nor the AWS CLI is installed on this image, so the" \
        "user data sealed by sealboot ${SEALBOOT_VERSION} was not fetched; the fragments were" \
        "left in place."
    sb_say "ERROR: what to do: bake the agent into the AMI (packaging/install.sh) and replace" \
        "this instance. exit 69"
    exit 69
fi

sb_args=(fetch --handoff "$SEALBOOT_HANDOFF" --manifest "$SEALBOOT_MANIFEST")
if [ -n "$sb_root" ]; then
    sb_args+=(--root "$sb_root")
fi
exec "$sb_agent" "${sb_args[@]}"
