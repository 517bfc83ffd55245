"""cloud-init datasource: EC2, with sealboot's sealed user data swapped for the real one.

cloud-init finds it through ``datasource_pkg_list: [sealboot_cloudinit]`` and
``datasource_list: [Sealboot, None]`` (no other entries: ds-identify knows no Sealboot check).
It subclasses the EC2 datasource, so everything EC2 does stays (``dsname`` is still ``Ec2``,
settings stay under ``datasource: {Ec2: ...}``). When the user data IMDS serves is sealboot's
boothook, it runs ``sealboot-agent fetch --handoff stdout``, which keeps every rule (digest,
durable write, delete, no secret in logs), and hands cloud-init the real user data before
cloud-init processes any of it: jinja templates, merge_how, bootcmd and every part type work as
if EC2 had delivered it in the clear. If the agent fails, the sealed user data stays, so the
boothook path runs (and reports the failure in ``cloud-init status``).

Stdlib only: this module is imported by cloud-init's own python3 (3.9 to 3.13) on every boot,
and ``obj.pkl`` references it, so it must stay importable for the life of the instance.
"""

from __future__ import annotations

import email
import email.policy
import gzip
import logging
import shlex
import subprocess

from cloudinit import sources
from cloudinit.sources import DataSourceEc2

LOG = logging.getLogger(__name__)

AGENT = "/usr/sbin/sealboot-agent"
AGENT_TIMEOUT = 600
_MANIFEST_VAR = "SEALBOOT_MANIFEST"


def sealed_manifest(raw: object) -> str | None:
    """The manifest JSON when *raw* is user data rendered by sealboot (cloud-init hand-off)."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    if not isinstance(raw, bytes) or b"SEALBOOT_MANIFEST" not in raw and raw[:2] != b"\x1f\x8b":
        return None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError):
            return None
    text = raw.decode("utf-8", "replace")
    if not text.startswith("#cloud-boothook"):
        msg = email.message_from_string(text, policy=email.policy.compat32)
        hooks = [p for p in msg.walk() if p.get_content_type() == "text/cloud-boothook"]
        body = hooks[0].get_payload(decode=True) if hooks else None
        if not isinstance(body, bytes):
            return None
        text = body.decode("utf-8", "replace")
    parts: list[str] = []
    handoff = "cloud-init"
    for line in text.splitlines():
        if line.startswith((f"{_MANIFEST_VAR}=", f"{_MANIFEST_VAR}+=")):
            parts.append("".join(shlex.split(line.split("=", 1)[1])))
        elif line.startswith("SEALBOOT_HANDOFF="):
            handoff = "".join(shlex.split(line.split("=", 1)[1]))
    if not parts or handoff != "cloud-init":
        return None  # not sealboot's, or the legacy capa layout, which expects the boothook
    return "".join(parts)


class DataSourceSealboot(DataSourceEc2.DataSourceEc2):  # type: ignore[misc]
    """The EC2 datasource, unsealing sealboot user data before cloud-init reads it."""

    def _get_data(self):  # type: ignore[no-untyped-def]
        found = super()._get_data()
        if not found:
            return found
        manifest = sealed_manifest(getattr(self, "userdata_raw", None))
        if manifest is None:
            return found
        real = self._unseal(manifest)
        if real is not None:
            self.userdata_raw = real
        return found

    def _unseal(self, manifest: str) -> bytes | None:
        instance_id = str((self.metadata or {}).get("instance-id") or "")
        argv = [AGENT, "fetch", "--handoff", "stdout", "--manifest", manifest]
        if instance_id:
            argv += ["--instance-id", instance_id]
        try:
            # The agent writes its own lines to /var/log/cloud-init-output.log; nothing secret
            # is on its stderr, which is dropped here so that each line appears there once.
            res = subprocess.run(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
                timeout=AGENT_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            LOG.warning(
                "sealboot: could not run %s (%s); leaving the sealed user data to the boothook",
                AGENT,
                type(exc).__name__,
            )
            return None
        if res.returncode != 0 or not res.stdout:
            LOG.warning(
                "sealboot: %s fetch exited %d; leaving the sealed user data to the "
                "boothook (see /var/log/cloud-init-output.log)",
                AGENT,
                res.returncode,
            )
            return None
        LOG.info("sealboot: unsealed %d bytes of user data", len(res.stdout))
        return res.stdout


datasources = [
    (DataSourceSealboot, (sources.DEP_FILESYSTEM, sources.DEP_NETWORK)),
]


def get_datasource_list(depends):  # type: ignore[no-untyped-def]
    return sources.list_from_depends(depends, datasources)
