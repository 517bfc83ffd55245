"""Hand-off backends: how fetched user data reaches its consumer.

``cloud-init`` splits the user data the way cloud-init would and puts each part where the
*current* boot still looks: cloud-config in ``/etc/cloud/cloud.cfg.d/`` (later stages re-read
it), scripts in the instance's ``scripts/`` directory (scripts-user runs them in the final
stage), nested boothooks run at once. A last script removes the plaintext after the final stage.

Example::

    >>> plan = plan_cloud_init(b"#cloud-config\\nruncmd: [id]\\n")
    >>> [p.kind for p in plan.parts]
    ['cloud-config']
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import shlex
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sealboot_agent.config import DEFAULT_OUTPUT, PRIVATE_OUTPUT
from sealboot_agent.errors import UnsupportedUserData
from sealboot_agent.state import make_private_dirs, write_durable

log = logging.getLogger(__name__)

CFG_DIR = "/etc/cloud/cloud.cfg.d"
CFG_PREFIX = "99-sealboot-"
SCRIPT_PREFIX = "sealboot-"
CLEANUP_SCRIPT = "zz-sealboot-cleanup"
FAILED_SCRIPT = "sealboot-failed"
_MAX_DEPTH = 4

# First-line markers cloud-init recognises (cloudinit/handlers/__init__.py), longest first.
_STARTS = (
    ("#cloud-config-archive", "text/cloud-config-archive"),
    ("#cloud-config", "text/cloud-config"),
    ("#cloud-boothook", "text/cloud-boothook"),
    ("#include-once", "text/x-include-once-url"),
    ("#include", "text/x-include-url"),
    ("#part-handler", "text/part-handler"),
    ("#upstart-job", "text/upstart-job"),
    ("## template: jinja", "text/jinja2"),
    ("#!", "text/x-shellscript"),
)
_KINDS = {
    "text/cloud-config": "cloud-config",
    "text/x-shellscript": "script",
    "text/cloud-boothook": "boothook",
}
_WHY_NOT = {
    "text/jinja2": "a '## template: jinja' part needs instance data at render time; use the "
    "sealboot datasource, or render the template before sealing",
    "text/x-include-url": "'#include' fetches more user data from URLs; seal the content itself",
    "text/x-include-once-url": "'#include-once' fetches user data from URLs; seal the content",
    "text/part-handler": "part handlers run code inside cloud-init; use a boothook instead",
    "text/cloud-config-archive": "cloud-config-archive is not supported; use MIME multipart",
    "text/upstart-job": "upstart jobs are not supported by current cloud-init",
}
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_MERGE_KEY = re.compile(rb"^(merge_how|merge_type)\s*:", re.M)
_RUNCMD = re.compile(rb"^runcmd\s*:", re.M)


@dataclass(frozen=True)
class Part:
    kind: str  # cloud-config | script | boothook
    name: str
    payload: bytes


@dataclass(frozen=True)
class Plan:
    parts: tuple[Part, ...]

    def count(self, kind: str) -> int:
        return sum(1 for p in self.parts if p.kind == kind)


def _kind_of(payload: bytes) -> str:
    head = payload.lstrip()[:64].decode("utf-8", "replace")
    for marker, ctype in _STARTS:
        if head.startswith(marker):
            return ctype
    return "text/plain"


def _maybe_gunzip(data: bytes) -> bytes:
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise UnsupportedUserData(f"user data looks gzipped but is not valid gzip: {exc}") from exc


def _add(parts: list[Part], ctype: str, name: str, payload: bytes, merge_header: bool) -> None:
    if ctype == "text/plain":
        ctype = _kind_of(payload)
    if ctype in _WHY_NOT:
        raise UnsupportedUserData(f"part {name!r} is {ctype}: {_WHY_NOT[ctype]}")
    kind = _KINDS.get(ctype)
    if kind is None:
        raise UnsupportedUserData(
            f"part {name!r} has type {ctype}, which the boothook hand-off cannot give to "
            "cloud-init; supported: cloud-config, shell scripts, boothooks (plain, gzip or MIME)"
        )
    if kind == "cloud-config" and (merge_header or _MERGE_KEY.search(payload)):
        raise UnsupportedUserData(
            f"part {name!r} asks for a custom merge (merge_how/merge_type); the boothook "
            "hand-off can only apply cloud-init's default merge. Use the sealboot datasource"
        )
    parts.append(Part(kind, name, payload))


def plan_cloud_init(data: bytes) -> Plan:
    """Split user data into the parts the hand-off will place, or refuse before anything happens."""
    data = _maybe_gunzip(data)
    parts: list[Part] = []
    head = data.lstrip()[:512].lower()
    if (
        head.startswith(b"content-type:")
        or b"\ncontent-type: multipart/" in head
        or (head.startswith(b"mime-version:"))
    ):
        # Imported here: the email package costs the boot path ~15 ms when no MIME is involved.
        import email
        import email.policy

        msg = email.message_from_bytes(data, policy=email.policy.compat32)
        index = 0
        for sub in msg.walk():
            if sub.is_multipart():
                continue
            index += 1
            raw = sub.get_payload(decode=True)
            payload = _maybe_gunzip(raw if isinstance(raw, bytes) else b"")
            name = sub.get_filename() or f"part-{index:03d}"
            merge = any(sub.get(h) for h in ("Merge-Type", "X-Merge-Type"))
            _add(parts, sub.get_content_type(), name, payload, merge)
    else:
        _add(parts, _kind_of(data), "part-001", data, False)
    if not parts:
        raise UnsupportedUserData("user data holds no part cloud-init would use")
    return Plan(tuple(parts))


def instance_dir(root: Path, instance_id: str) -> Path:
    return root / "var/lib/cloud/instances" / instance_id


def _script_name(index: int, name: str) -> str:
    return f"{SCRIPT_PREFIX}{index:02d}-{_SAFE_NAME.sub('_', name)[:64]}"


def _cleanup_script(cfg_files: list[str], scripts: list[str], plaintext: str | None) -> bytes:
    """Removes what held plaintext once every user script has run (it sorts last)."""
    paths = [*cfg_files, *scripts]
    if plaintext:
        paths.append(plaintext)
    lines = [
        "#!/bin/sh",
        "# sealboot: the sealed user data has been used; do not leave it on disk.",
        "rm -f -- " + " ".join(shlex.quote(p) for p in paths) + ' "$0"',
        "echo 'sealboot: removed the plaintext user data after the final stage'",
        "",
    ]
    return "\n".join(lines).encode()


def apply_cloud_init(
    plan: Plan,
    root: Path,
    instance_id: str,
    *,
    plaintext: str | None,
    keep_plaintext: bool,
    run: Callable[..., subprocess.CompletedProcess[bytes]] = subprocess.run,
) -> None:
    """Place each part for the current boot; nested boothooks run now."""
    scripts_dir = instance_dir(root, instance_id) / "scripts"
    cfg_files: list[str] = []
    scripts: list[str] = []
    for index, part in enumerate(plan.parts):
        if part.kind == "cloud-config":
            inside = f"{CFG_DIR}/{CFG_PREFIX}{index:02d}.cfg"
            write_durable(root / inside.lstrip("/"), part.payload, 0o600)
            cfg_files.append(inside)
            log.info("cloud-config part %s -> %s", part.name, inside)
        elif part.kind == "script":
            path = scripts_dir / _script_name(index, part.name)
            write_durable(path, part.payload, 0o700)
            scripts.append("/" + str(path.relative_to(root)))
            log.info("script part %s -> %s (runs in the final stage)", part.name, scripts[-1])
        else:
            _run_boothook(part, root, instance_id, index, run)
    if not keep_plaintext:
        if any(p.kind == "cloud-config" and _RUNCMD.search(p.payload) for p in plan.parts):
            # cloud-init writes the sealed runcmd to scripts/runcmd; it has run by now.
            scripts.append(f"/var/lib/cloud/instances/{instance_id}/scripts/runcmd")
        write_durable(
            scripts_dir / CLEANUP_SCRIPT, _cleanup_script(cfg_files, scripts, plaintext), 0o700
        )
    clear_failure(root, instance_id)


def _run_boothook(
    part: Part,
    root: Path,
    instance_id: str,
    index: int,
    run: Callable[..., subprocess.CompletedProcess[bytes]],
) -> None:
    body = part.payload
    if body.lstrip().startswith(b"#cloud-boothook"):
        body = body.lstrip().split(b"\n", 1)[1] if b"\n" in body.lstrip() else b""
    hooks = root / "var/lib/sealboot/boothooks"
    make_private_dirs(hooks)
    path = hooks / _script_name(index, part.name)
    write_durable(path, body.lstrip(), 0o700)
    env = dict(os.environ, INSTANCE_ID=instance_id)
    log.info("running nested boothook %s", part.name)
    try:
        res = run([str(path)], cwd=str(root), env=env, stdin=subprocess.DEVNULL, check=False)
    except OSError as exc:
        log.warning("nested boothook %s could not run: %s", part.name, exc.strerror)
    else:
        if res.returncode != 0:
            # cloud-init itself only logs a failing boothook; do the same.
            log.warning("nested boothook %s exited %d", part.name, res.returncode)
    finally:
        path.unlink(missing_ok=True)


def schedule_cleanup(root: Path, instance_id: str, paths: list[str]) -> None:
    """Remove *paths* once the final stage has run (the datasource hand-off's private copy)."""
    scripts_dir = instance_dir(root, instance_id) / "scripts"
    write_durable(scripts_dir / CLEANUP_SCRIPT, _cleanup_script([], paths, None), 0o700)


def report_failure(root: Path, instance_id: str, message: str) -> None:
    """Make a failed fetch visible in ``cloud-init status`` (a failing user script)."""
    text = (
        "#!/bin/sh\n"
        f"echo {shlex.quote('sealboot: ' + message)} >&2\n"
        "echo 'sealboot: see sealboot-agent lines in /var/log/cloud-init-output.log' >&2\n"
        "exit 1\n"
    )
    write_durable(instance_dir(root, instance_id) / "scripts" / FAILED_SCRIPT, text.encode(), 0o700)


def clear_failure(root: Path, instance_id: str) -> None:
    (instance_dir(root, instance_id) / "scripts" / FAILED_SCRIPT).unlink(missing_ok=True)


def restart_cloud_init(root: Path) -> None:
    """CAPA's legacy hand-off: restart cloud-init so its ``#include`` finds the file.

    Known to fail on stock cloud-init: the missing include is a hard error before any boothook
    runs (20.3+), 24.2 ends in ``error``, and 24.3+ has no unit that a restart re-runs.
    """
    if root != Path("/"):
        log.info("hand-off capa: would restart cloud-init (not under --root %s)", root)
        return
    try:
        # --no-block: a blocking restart from inside cloud-init's own boot deadlocks.
        res = subprocess.run(
            ["systemctl", "--no-block", "restart", "cloud-init"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("hand-off capa: could not restart cloud-init: %s", exc)
        return
    if res.returncode != 0:
        log.warning(
            "hand-off capa: 'systemctl restart cloud-init' failed: %s", res.stderr.strip()[:200]
        )
    else:
        log.info("hand-off capa: asked systemd to restart cloud-init")


@dataclass(frozen=True)
class Handoff:
    """A hand-off mode: where the durable copy goes by default and what is said about it."""

    name: str
    default_output: str
    description: str


HANDOFFS: dict[str, Handoff] = {
    "cloud-init": Handoff(
        "cloud-init",
        PRIVATE_OUTPUT,
        "parts placed for this boot: cloud-config in /etc/cloud/cloud.cfg.d, scripts for "
        "scripts-user, boothooks run now",
    ),
    "capa": Handoff(
        "capa",
        DEFAULT_OUTPUT,
        "CAPA's legacy layout: /etc/secret-userdata.txt, then restart cloud-init so its "
        "#include reads it (fails on stock cloud-init; see README)",
    ),
    "stdout": Handoff(
        "stdout",
        PRIVATE_OUTPUT,
        "user data written to standard output for the sealboot cloud-init datasource",
    ),
    "file": Handoff(
        "file",
        DEFAULT_OUTPUT,
        "user data left at the output path (CAPA's location) for the consumer to read",
    ),
    "none": Handoff(
        "none",
        PRIVATE_OUTPUT,
        "user data kept only in sealboot's private state directory; nothing is handed on",
    ),
}
