"""``sealboot-agent doctor``: check everything a fetch needs, without reading any secret value.

Example::

    >>> checks = run_doctor(DoctorConfig(manifest=m), Deps())
    >>> all(c.ok for c in checks)
    True
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

from sealboot_agent.errors import ImdsError
from sealboot_agent.imds import Deadline, Imds, RoleCredentials
from sealboot_agent.run import Deps
from sealboot_agent.wire import Manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DoctorConfig:
    """What doctor checks against; built by the CLI like the fetch configuration."""

    manifest: Manifest | None = None
    region: str | None = None
    endpoint_url: str | None = None
    imds_endpoint: str = "http://169.254.169.254"
    deadline: float = 20.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    warn: bool = False

    @property
    def verdict(self) -> str:
        return "WARN" if self.warn else ("ok" if self.ok else "FAIL")


def _timed(fn: Callable[[], str]) -> tuple[str, float]:
    t0 = time.monotonic()
    out = fn()
    return out, time.monotonic() - t0


def _cloud_init_version() -> Check:
    exe = shutil.which("cloud-init")
    if exe is None:
        return Check("cloud-init", True, "not installed on this machine", warn=True)
    try:
        res = subprocess.run(
            [exe, "--version"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("cloud-init", False, f"'cloud-init --version' failed: {exc}")
    text = (res.stdout or res.stderr).strip().splitlines()
    return Check("cloud-init", res.returncode == 0, text[0] if text else "no version printed")


def _reachable(url: str, timeout: float) -> Check:
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    t0 = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        return Check(
            "endpoint",
            False,
            f"cannot connect to {host}:{port} ({exc}); check the "
            "VPC endpoint, security groups, proxy or NAT",
        )
    ms = (time.monotonic() - t0) * 1000
    return Check("endpoint", True, f"{url} accepts connections ({ms:.0f} ms)")


def run_doctor(cfg: DoctorConfig, deps: Deps) -> list[Check]:
    """Run every check in order; later checks that need an earlier result are skipped."""
    checks: list[Check] = []
    deadline = Deadline(cfg.deadline, deps.clock, deps.sleep)
    imds = Imds(cfg.imds_endpoint, deps.http_factory(), deadline)
    creds: RoleCredentials | None = None
    region = cfg.region or (cfg.manifest.region if cfg.manifest else None)
    try:
        _, took = _timed(imds.token)
        checks.append(
            Check("imds", True, f"IMDSv2 token from {cfg.imds_endpoint} in {took * 1000:.0f} ms")
        )
        instance_id = imds.instance_id()
        imds_region = imds.region()
        region = region or imds_region
        checks.append(Check("identity", True, f"instance {instance_id} in {imds_region}"))
        creds = imds.role_credentials()
        checks.append(
            Check(
                "credentials",
                True,
                f"instance profile role {creds.role}, expires {creds.expiry_time}",
            )
        )
    except ImdsError as exc:
        checks.append(Check("imds", False, f"{exc.message}; {exc.advice}"))
    if region:
        checks.append(Check("region", True, region))
    else:
        checks.append(Check("region", False, "unknown: pass --region or fix IMDS"))
    endpoint = cfg.endpoint_url or (cfg.manifest.endpoint_url if cfg.manifest else None)
    if endpoint is None and region:
        endpoint = f"https://secretsmanager.{region}.amazonaws.com"
    if endpoint:
        checks.append(_reachable(endpoint, timeout=min(5.0, deadline.remaining() or 1.0)))
    if cfg.manifest is not None and creds is not None and region:
        checks.extend(_fragments(cfg.manifest, imds, creds, region, endpoint, deadline))
    checks.append(_cloud_init_version())
    return checks


def _fragments(
    manifest: Manifest,
    imds: Imds,
    creds: RoleCredentials,
    region: str,
    endpoint: str | None,
    deadline: Deadline,
) -> list[Check]:
    from botocore.exceptions import BotoCoreError, ClientError

    from sealboot_agent.aws import make_client, session_from_imds
    from sealboot_agent.retry import client_error

    client = make_client(
        session_from_imds(imds, creds),
        "secretsmanager",
        region=region,
        endpoint_url=endpoint,
        deadline=deadline,
    )
    out = []
    for name in manifest.fragments:
        try:
            client.describe_secret(SecretId=name)
        except ClientError as exc:
            code, _, _ = client_error(exc)
            if code == "ResourceNotFoundException":
                out.append(Check("fragment", False, f"{name}: does not exist"))
            elif code in ("AccessDeniedException", "AccessDenied"):
                out.append(
                    Check(
                        "fragment",
                        True,
                        f"{name}: DescribeSecret denied, so its "
                        "existence is unknown (the node policy need not allow it)",
                        warn=True,
                    )
                )
            else:
                out.append(Check("fragment", False, f"{name}: {code}"))
        except BotoCoreError as exc:
            out.append(Check("fragment", False, f"{name}: {exc}"))
        else:
            out.append(Check("fragment", True, f"{name}: exists"))
    return out
