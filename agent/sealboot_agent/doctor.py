"""``sealboot-agent doctor``: check everything a fetch needs, without reading any secret value.

Example::

    >>> checks = run_doctor(DoctorConfig(manifest=m), Deps())
    >>> summary(checks)
    '7 passed, 0 warnings, 0 failed, 0 skipped'
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import urlsplit

from sealboot_agent.config import DEFAULT_IMDS_ENDPOINT, Target
from sealboot_agent.errors import FragmentMissing, ImdsError, shown
from sealboot_agent.imds import Deadline, Imds, RoleCredentials
from sealboot_agent.run import Deps
from sealboot_agent.stores import (
    DELETING,
    DENIED,
    MISSING,
    PLAINTEXT,
    PRESENT,
    STORES,
    Probed,
    Store,
)
from sealboot_agent.wire import BACKEND_SECRETS_MANAGER, Manifest

log = logging.getLogger(__name__)

OK, WARN, FAIL, SKIP = "ok", "WARN", "FAIL", "SKIP"
VERDICTS = (OK, WARN, FAIL, SKIP)

_SEE_ENDPOINT = (
    "see the endpoint and credentials checks above; if they passed, run doctor again "
    "(AWS may have throttled or failed for a moment)"
)


def _probe_denied(store: Store) -> tuple[str, str]:
    """The verdict and the advice when the store's metadata probe is denied.

    Where the node policy grants the probe (it is also how fetch reads), a denial will stop a
    fetch: FAIL. Where it does not (Secrets Manager's DescribeSecret), doctor just cannot look.
    """
    probe = f"{store.service}:{store.probe_operation}"
    if probe in store.node_actions:
        return FAIL, (
            f"the instance role may not call {probe}, which fetch needs too: grant it "
            f"{' and '.join(store.node_actions)} on the fragments ('sealboot policy --role "
            f"node --backend {store.backend}')"
        )
    return SKIP, (
        f"the node policy ('sealboot policy --role node') grants {store.node_actions[0]}, "
        f"which reads the value, but not {probe}, and doctor reads no secret value. Nothing to "
        "fix: fetch reports a missing fragment itself (exit 4). To let doctor check, also grant "
        f"{probe} on the fragments"
    )


@dataclass(frozen=True)
class DoctorConfig:
    """What doctor checks against; built by the CLI like the fetch configuration."""

    manifest: Manifest | None = None
    region: str | None = None
    endpoint_url: str | None = None
    imds_endpoint: str = DEFAULT_IMDS_ENDPOINT
    # Each stage (IMDS, then AWS) gets this long; a late instance profile is waited for.
    deadline: float = 20.0
    # Without a manifest: which store --endpoint-url and the endpoint check are about.
    backend: str = BACKEND_SECRETS_MANAGER
    use_fips: bool = False

    @property
    def target(self) -> Target:
        """Backend, region, endpoint and FIPS: the flags over the manifest, as fetch has them."""
        return Target.of(self.manifest, self.region, self.endpoint_url, self.use_fips, self.backend)


@dataclass(frozen=True)
class Check:
    """One verdict; every WARN and FAIL carries *todo*, what the operator should do."""

    name: str
    verdict: str
    detail: str
    todo: str = ""

    @property
    def ok(self) -> bool:
        """Whether doctor may still exit 0: only FAIL counts against it."""
        return self.verdict != FAIL


def summary(checks: Sequence[Check]) -> str:
    """Each verdict counted on its own: a warning or a skipped check is not a pass."""
    n = {v: sum(1 for c in checks if c.verdict == v) for v in VERDICTS}
    warnings = "warning" if n[WARN] == 1 else "warnings"
    return f"{n[OK]} passed, {n[WARN]} {warnings}, {n[FAIL]} failed, {n[SKIP]} skipped"


def _ms(since: float) -> str:
    return f"{(time.monotonic() - since) * 1000:.0f} ms"


def _cloud_init_version() -> Check:
    exe = shutil.which("cloud-init")
    if exe is None:
        return Check(
            "cloud-init",
            WARN,
            "not installed on this machine",
            "install cloud-init on the image: the boothook and the datasource run under it "
            "(ignore this where only 'sealboot-agent fetch' is run by hand)",
        )
    try:
        res = subprocess.run(
            [exe, "--version"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check(
            "cloud-init",
            FAIL,
            f"'cloud-init --version' failed: {exc}",
            "repair the cloud-init installation; run 'cloud-init --version' to see why",
        )
    text = (res.stdout or res.stderr).strip().splitlines()
    first = text[0] if text else "no version printed"
    if res.returncode != 0:
        return Check(
            "cloud-init",
            FAIL,
            f"'cloud-init --version' exited {res.returncode}: {first}",
            "repair the cloud-init installation; run 'cloud-init --version' to see why",
        )
    return Check("cloud-init", OK, first)


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
            FAIL,
            f"cannot connect to {url} ({host}:{port}: {exc})",
            "check the VPC endpoint, security groups, proxy or NAT, and --endpoint-url",
        )
    return Check("endpoint", OK, f"{url} accepts connections ({_ms(t0)})")


def _offline_session() -> Any:
    """A botocore session with no credential source, only to resolve an endpoint.

    botocore's default chain would look for credentials, and try IMDSv1 on the way.
    """
    import botocore.session
    from botocore.credentials import CredentialResolver

    session = botocore.session.Session()
    session.register_component("credential_provider", CredentialResolver(providers=[]))
    return session


def _client(target: Target, deps: Deps, session: Any, region: str, deadline: Deadline) -> Any:
    from sealboot_agent.aws import make_client

    if deps.client_factory is not None:
        return deps.client_factory(region=region, endpoint_url=target.endpoint_url)
    return make_client(
        session,
        STORES[target.backend].service,
        region=region,
        endpoint_url=target.endpoint_url,
        deadline=deadline,
        use_fips=target.use_fips,
    )


def _imds_checks(
    cfg: DoctorConfig, imds: Imds, checks: list[Check]
) -> tuple[str | None, RoleCredentials | None]:
    """The imds, identity and credentials checks; return the IMDS region and credentials."""
    t0 = time.monotonic()
    try:
        imds.token()
    except ImdsError as exc:
        checks.append(Check("imds", FAIL, exc.message, exc.advice))
        why = "needs an IMDSv2 token (see the imds check)"
        checks.append(Check("identity", SKIP, why))
        checks.append(Check("credentials", SKIP, why))
        return None, None
    checks.append(Check("imds", OK, f"IMDSv2 token from {cfg.imds_endpoint} in {_ms(t0)}"))
    region = None
    try:
        instance_id = imds.instance_id()
        region = imds.region()
        checks.append(Check("identity", OK, f"instance {instance_id} in {region}"))
    except ImdsError as exc:
        checks.append(Check("identity", FAIL, exc.message, exc.advice))
    creds = None
    try:
        creds = imds.role_credentials()
        checks.append(
            Check(
                "credentials",
                OK,
                f"instance profile role {creds.role}, expires {creds.expiry_time}",
            )
        )
    except ImdsError as exc:
        checks.append(Check("credentials", FAIL, exc.message, exc.advice))
    return region, creds


def _region_check(target: Target, imds_region: str | None) -> tuple[str | None, Check]:
    region, source = target.region, target.region_source
    if region is None and imds_region is not None:
        region, source = imds_region, "IMDS"
    if region:
        return region, Check("region", OK, f"{region} (from {source})")
    return None, Check(
        "region",
        FAIL,
        "unknown: not given, not in the manifest, and IMDS did not say",
        "pass --region (or SEALBOOT_REGION), or fix IMDS (see the checks above)",
    )


def _endpoint_checks(
    cfg: DoctorConfig,
    deps: Deps,
    imds: Imds,
    creds: RoleCredentials | None,
    region: str | None,
    checks: list[Check],
) -> tuple[Any, bool]:
    """The endpoint check; return the store's client (or None) and whether it is unreachable."""
    from botocore.exceptions import BotoCoreError

    from sealboot_agent.aws import session_from_imds

    target = cfg.target
    if region is None:
        if target.endpoint_url:
            checks.append(_reachable(target.endpoint_url, timeout=5.0))
        else:
            checks.append(Check("endpoint", SKIP, "needs a region (see the region check)"))
        return None, False
    session = session_from_imds(imds, creds) if creds is not None else _offline_session()
    fips = "on" if target.use_fips else "off"
    log.debug("backend %s, FIPS endpoints %s", target.backend, fips)
    # The AWS calls get their own budget: a late instance profile may have used up IMDS's.
    deadline = Deadline(cfg.deadline, deps.clock, deps.sleep)
    try:
        client = _client(target, deps, session, region, deadline)
    except BotoCoreError as exc:
        checks.append(
            Check(
                "endpoint",
                FAIL,
                f"no endpoint for {target.backend} in {region}"
                f"{' with FIPS' if target.use_fips else ''}: {exc}",
                "check the region and the manifest's use_fips, or pass --endpoint-url",
            )
        )
        return None, False
    resolved = target.endpoint_url or getattr(client.meta, "endpoint_url", None)
    if not resolved:
        checks.append(Check("endpoint", SKIP, "the client names no endpoint URL"))
        return client, False
    checks.append(_reachable(resolved, timeout=5.0))
    return client, checks[-1].verdict == FAIL


def run_doctor(cfg: DoctorConfig, deps: Deps) -> list[Check]:
    """Run every check in order; one that cannot run is a SKIP that says why."""
    checks: list[Check] = []
    manifest = cfg.manifest
    t0 = time.monotonic()
    imds = Imds(
        cfg.imds_endpoint, deps.http_factory(), Deadline(cfg.deadline, deps.clock, deps.sleep)
    )
    imds_region, creds = _imds_checks(cfg, imds, checks)
    log.debug("IMDS: %d request(s) in %s", imds.requests, _ms(t0))
    region, check = _region_check(cfg.target, imds_region)
    checks.append(check)
    client, unreachable = _endpoint_checks(cfg, deps, imds, creds, region, checks)
    if manifest is None:
        checks.append(Check("fragments", SKIP, "no --manifest or --prefix given"))
    elif creds is None:
        checks.append(
            Check(
                "fragments",
                SKIP,
                "needs the instance-profile credentials (see the credentials check)",
            )
        )
    elif client is None:
        checks.append(Check("fragments", SKIP, "needs a region and an endpoint (see above)"))
    elif unreachable:
        # Each call would only wait out its timeouts against an endpoint that takes none.
        checks.append(
            Check("fragments", SKIP, "the endpoint accepts no connections (see the endpoint check)")
        )
    else:
        checks.extend(_fragments(STORES[manifest.backend], client, manifest.fragments))
    checks.append(_cloud_init_version())
    return checks


def print_doctor(checks: Sequence[Check], out: TextIO) -> int:
    """Print one line per check and the summary; 1 when a check failed, else 0."""
    for check in checks:
        # Details quote IMDS, AWS, cloud-init and the manifest: all text from outside.
        out.write(f"[{check.verdict:^4}] {check.name}: {shown(check.detail, limit=4096)}\n")
        if check.todo:
            out.write(f"       what to do: {shown(check.todo, limit=4096)}\n")
    out.write(summary(checks) + "\n")
    return 1 if any(c.verdict == FAIL for c in checks) else 0


def _failed_call(what: str, exc: Exception) -> tuple[str, str, str]:
    """(description, short description, code) of a failed AWS call, escaped (from outside).

    The short one leaves out the message, which can be a whole XML error document.
    """
    from botocore.exceptions import ClientError

    from sealboot_agent.retry import client_error

    if isinstance(exc, ClientError):
        code, message, rid = client_error(exc)
        at = f", request id {rid}" if rid else ""
        return f"{what} failed ({code}{at}): {message}", f"{what} denied ({code}{at})", code
    text = f"{what} failed: {shown(exc)}"
    return text, text, ""


def _verdict(store: Store, probed: Probed) -> Check:
    name, detail = probed.name, probed.detail
    if probed.state == MISSING:
        return Check("fragment", FAIL, f"{name}: does not exist", FragmentMissing.hint)
    if probed.state == DELETING:
        return Check(
            "fragment",
            FAIL,
            f"{name}: scheduled for deletion (on {detail}); fetch cannot read it",
            "restore it with 'aws secretsmanager restore-secret --secret-id NAME', or "
            "re-seal the user data and replace the instance",
        )
    if probed.state == PRESENT:
        return Check(
            "fragment", OK, f"{name}: exists" + (f" ({detail}, not decrypted)" if detail else "")
        )
    if probed.state == PLAINTEXT:
        return Check(
            "fragment",
            WARN,
            f"{name}: exists, but as a {detail} parameter, stored unencrypted",
            "re-seal with 'sealboot seal --backend ssm' (it writes SecureString), "
            "replace the instance, and delete this parameter",
        )
    return Check(
        "fragment", FAIL, f"{name}: missing from the {store.probe_operation} answer", _SEE_ENDPOINT
    )


def _fragments(store: Store, client: Any, names: Sequence[str]) -> list[Check]:
    """The store's metadata-only probe of every fragment; no value is read or shown."""
    from botocore.exceptions import BotoCoreError, ClientError

    out: list[Check] = []
    done = 0
    for batch in store.batches(names, store.probe_max):
        t0 = time.monotonic()
        what = f"{store.probe_operation} of " + (
            batch[0] if store.probe_max == 1 else f"{len(batch)} fragment(s)"
        )
        try:
            found = store.probe(client, batch)
        except (ClientError, BotoCoreError) as exc:
            detail, short, code = _failed_call(what, exc)
            log.debug("%s after %s", detail, _ms(t0))
            rest = len(names) - done
            if code in DENIED:
                # One denial is enough: the rest would be denied too, each logged by CloudTrail.
                verdict, todo = _probe_denied(store)
                if verdict == SKIP:
                    out.append(Check("fragments", SKIP, f"{rest} not checked: {short}; {todo}"))
                else:
                    out.append(Check("fragments", verdict, f"{rest} not checked: {short}", todo))
            else:
                out.append(Check("fragments", FAIL, f"{rest} not checked: {detail}", _SEE_ENDPOINT))
            return out
        rid = found[0].request_id if found else ""
        log.debug("%s: request id %s, %s", what, rid, _ms(t0))
        out.extend(_verdict(store, p) for p in found)
        done += len(batch)
    return out
