"""Seal user data into Secrets Manager fragments and return the manifest that names them.

Example::

    >>> m = seal(b"#cloud-config\\n", namespace="default", cluster="c1", machine="m1",
    ...          config=SealConfig(region="eu-west-1"))
    >>> m.count
    1
"""

from __future__ import annotations

import base64
import datetime
import logging
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, overload

from botocore.exceptions import BotoCoreError, ClientError

from sealboot.aws import Client, aws_client, error_code, wrap
from sealboot.errors import InputError, SealbootError
from sealboot_agent import __version__
from sealboot_agent.wire import (
    BACKEND_SECRETS_MANAGER,
    BACKEND_SSM,
    CAPA_FRAGMENT_SIZE,
    CAPA_SSM_FRAGMENT_SIZE,
    DEFAULT_ROOT,
    DEFAULT_SSM_ROOT,
    FORMAT_CAPA,
    FORMAT_NATIVE,
    MAX_FRAGMENTS,
    REGION_RE,
    SECRETS_MANAGER_MAX_VALUE,
    SSM_ADVANCED_MAX,
    SSM_STANDARD_MAX,
    Manifest,
    WireError,
    check_endpoint_url,
    gzip_deterministic,
    name_component,
    native_fragment_names,
    random_token,
    sha256_hex,
    split,
    ssm_fragment_names,
)

log = logging.getLogger(__name__)

CLUSTER_TAG = "sigs.k8s.io/cluster-api-provider-aws/cluster/{cluster}"
ROLE_TAG = "sigs.k8s.io/cluster-api-provider-aws/role"
EXPIRY_TAG = "sealboot.io/expires-at"
NAMESPACE_TAG = "sealboot.io/namespace"
FORMAT_TAG = "sealboot.io/format"
DEFAULT_TTL = 24 * 3600
MAX_USERDATA = 64 * 1024 * 1024
_TAG_KEY_MAX = 128
_RESERVED_TAG_PREFIXES = ("aws:", "sealboot.io/", "sigs.k8s.io/cluster-api-provider-aws/")


@dataclass(frozen=True)
class SealConfig:
    """How and where to seal; build once at the edge.

    Example::

        >>> SealConfig(region="eu-west-1", kms_key_id="alias/sealboot", ttl_seconds=3600)
    """

    region: str | None = None
    endpoint_url: str | None = None
    kms_key_id: str | None = None
    tags: tuple[tuple[str, str], ...] = ()
    format: str = FORMAT_NATIVE
    root: str | None = None  # default: DEFAULT_ROOT, or DEFAULT_SSM_ROOT for ssm
    ttl_seconds: int = DEFAULT_TTL
    deadline: float = 120.0
    backend: str = BACKEND_SECRETS_MANAGER
    tier: str = "standard"  # ssm only: standard (4 KB values) or advanced (8 KB)
    use_fips: bool = False


@overload
def component(kind: str, value: str) -> str: ...
@overload
def component(kind: str, value: None) -> None: ...
def component(kind: str, value: str | None) -> str | None:
    """A namespace, cluster, machine or role name as the wire contract writes it (None stays
    None); a name it refuses is the caller's InputError.

    Example::

        >>> component("cluster", "prod-eu")
        'prod-eu'
    """
    if value is None:
        return None
    try:
        return name_component(kind, value)
    except WireError as exc:
        raise InputError(str(exc)) from exc


def _tags(
    cluster: str, machine: str, namespace: str, role: str, cfg: SealConfig, now: float
) -> list[dict[str, str]]:
    expires = datetime.datetime.fromtimestamp(now + cfg.ttl_seconds, tz=datetime.timezone.utc)
    tags = {
        CLUSTER_TAG.format(cluster=cluster): "owned",
        ROLE_TAG: role,
        "Name": machine,
        NAMESPACE_TAG: namespace,
        FORMAT_TAG: cfg.format,
        EXPIRY_TAG: expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    for key, value in cfg.tags:
        if key.startswith(_RESERVED_TAG_PREFIXES) or key == "Name":
            raise InputError(f"tag {key!r} is set by sealboot itself and cannot be overridden")
        tags[key] = value
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def _names(cfg: SealConfig, namespace: str, cluster: str, machine: str, count: int) -> list[str]:
    ssm = cfg.backend == BACKEND_SSM
    try:
        if cfg.format == FORMAT_CAPA:
            # Exactly what a stock CAPA controller writes, so either side can read the other.
            if ssm:
                return [f"{DEFAULT_SSM_ROOT}/{uuid.uuid4()}/{i}" for i in range(count)]
            prefix = f"{DEFAULT_ROOT}/{uuid.uuid4()}"
            return [f"{prefix}-{i}" for i in range(count)]
        if ssm:
            return ssm_fragment_names(
                cfg.root or DEFAULT_SSM_ROOT, namespace, cluster, machine, count, random_token()
            )
        return native_fragment_names(
            cfg.root or DEFAULT_ROOT, namespace, cluster, machine, count, random_token()
        )
    except WireError as exc:
        raise InputError(str(exc)) from exc


def _chunks(cfg: SealConfig, stream: bytes) -> list[bytes]:
    """Fragment values: raw gzip slices for Secrets Manager, base64 text slices for SSM."""
    if cfg.backend != BACKEND_SSM:
        size = CAPA_FRAGMENT_SIZE if cfg.format == FORMAT_CAPA else SECRETS_MANAGER_MAX_VALUE
        return split(stream, size)
    text = base64.b64encode(stream)
    if cfg.format == FORMAT_CAPA:
        size = CAPA_SSM_FRAGMENT_SIZE
    else:
        size = SSM_ADVANCED_MAX if cfg.tier == "advanced" else SSM_STANDARD_MAX
    return split(text, size)


class _Creator:
    """Creates fragments one by one and remembers them, so a failure can undo its own work."""

    def __init__(
        self,
        client: Client,
        cfg: SealConfig,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
    ):
        self.client = client
        self.cfg = cfg
        self.clock = clock
        self.sleep = sleep
        self.created: list[str] = []
        self.end = clock() + cfg.deadline

    def create(
        self, name: str, data: bytes, tags: list[dict[str, str]], index: int, total: int
    ) -> None:
        ssm = self.cfg.backend == BACKEND_SSM
        description = f"sealboot fragment {index + 1}/{total}; deleted at first boot"
        kwargs: dict[str, Any] = {"Name": name, "Tags": tags, "Description": description}
        if ssm:
            kwargs.update(
                Value=data.decode("ascii"),
                Type="SecureString",
                Tier="Advanced" if self.cfg.tier == "advanced" else "Standard",
            )
            if self.cfg.kms_key_id:
                kwargs["KeyId"] = self.cfg.kms_key_id
        else:
            kwargs["SecretBinary"] = data
            if self.cfg.kms_key_id:
                kwargs["KmsKeyId"] = self.cfg.kms_key_id
        attempt = 0
        while True:
            try:
                if ssm:
                    self.client.put_parameter(**kwargs)
                else:
                    self.client.create_secret(**kwargs)
                self.created.append(name)
                return
            except ClientError as exc:
                if error_code(exc) not in ("ResourceExistsException", "ParameterAlreadyExists"):
                    raise
                # A timed-out create that did succeed, or a name being recreated: as CAPA does,
                # force-delete and retry; the delete is asynchronous, so back off.
                log.info("fragment %s already exists; force-deleting and retrying", name)
                self._force_delete(name)
            delay = random.uniform(0, min(5.0, 0.25 * 2**attempt))  # noqa: S311 - jitter
            if self.clock() + delay > self.end:
                raise SealbootError(
                    f"could not create {name} before the deadline: it keeps "
                    "existing after force-delete"
                )
            self.sleep(delay)
            attempt += 1

    def _force_delete(self, name: str) -> None:
        try:
            if self.cfg.backend == BACKEND_SSM:
                self.client.delete_parameter(Name=name)
            else:
                self.client.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)
        except ClientError as exc:
            if error_code(exc) not in ("ResourceNotFoundException", "ParameterNotFound"):
                raise

    def undo(self) -> list[str]:
        """Delete what this run created; return the names that could not be deleted."""
        left = []
        for name in self.created:
            try:
                self._force_delete(name)
            except (ClientError, BotoCoreError) as exc:
                log.error("could not remove fragment %s after a failed seal: %s", name, exc)
                left.append(name)
        return left


def seal(
    userdata: bytes,
    *,
    namespace: str,
    cluster: str,
    machine: str,
    role: str = "node",
    config: SealConfig = SealConfig(),
    client: Client | None = None,
    clock: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> Manifest:
    """Gzip, digest, split and store *userdata*; return the manifest (all or nothing)."""
    if config.format not in (FORMAT_NATIVE, FORMAT_CAPA):
        raise InputError(f"unknown format {config.format!r}; use native or capa")
    if len(userdata) > MAX_USERDATA:
        raise InputError(
            f"user data is {len(userdata)} bytes; sealboot seals at most {MAX_USERDATA}"
        )
    if config.endpoint_url is not None:
        try:
            check_endpoint_url(config.endpoint_url)
        except WireError as exc:
            raise InputError(str(exc)) from exc
    if config.region is not None and not REGION_RE.match(config.region):
        raise InputError(f"region {config.region!r} is not an AWS region name (like eu-west-1)")
    if not 60 <= config.ttl_seconds <= 30 * 86400:
        raise InputError("the expiry must be between 1 minute and 30 days")
    namespace, cluster = component("namespace", namespace), component("cluster", cluster)
    machine, role = component("machine", machine), component("role", role)
    if len(CLUSTER_TAG.format(cluster=cluster)) > _TAG_KEY_MAX:
        raise InputError(
            f"cluster name {cluster!r} is too long for the CAPA cluster tag "
            f"(at most {_TAG_KEY_MAX - len(CLUSTER_TAG.format(cluster=''))} chars)"
        )
    if config.backend not in (BACKEND_SECRETS_MANAGER, BACKEND_SSM):
        raise InputError(f"unknown backend {config.backend!r}; use secrets-manager or ssm")
    if config.tier not in ("standard", "advanced"):
        raise InputError(f"unknown SSM tier {config.tier!r}; use standard or advanced")
    stream = gzip_deterministic(userdata)
    chunks = _chunks(config, stream)
    if len(chunks) > MAX_FRAGMENTS:
        raise InputError(
            f"user data needs {len(chunks)} fragments; a manifest names at most {MAX_FRAGMENTS}"
        )
    names = _names(config, namespace, cluster, machine, len(chunks))
    tags = _tags(cluster, machine, namespace, role, config, wall())
    if client is None:
        client = aws_client(
            "ssm" if config.backend == BACKEND_SSM else "secretsmanager",
            region=config.region,
            endpoint_url=config.endpoint_url,
            use_fips=config.use_fips,
        )
    region = config.region or client.meta.region_name
    try:
        # Built, and checked as the agent will check it, before anything exists in AWS: a
        # manifest refused now cannot leave fragments behind that nothing will ever fetch.
        manifest = Manifest(
            backend=config.backend,
            format=config.format,
            use_fips=config.use_fips,
            fragments=tuple(names),
            region=region,
            endpoint_url=config.endpoint_url,
            sha256=sha256_hex(stream),
            size=len(stream),
            raw_size=len(userdata),
            labels={
                "namespace": namespace,
                "cluster": cluster,
                "machine": machine,
                "role": role,
                "sealed_by": f"sealboot/{__version__}",
            },
        )
        manifest.check_scope()
    except WireError as exc:
        raise InputError(str(exc)) from exc
    creator = _Creator(client, config, clock, sleep)
    try:
        for i, (name, chunk) in enumerate(zip(names, chunks)):
            creator.create(name, chunk, tags, i, len(chunks))
    except (ClientError, BotoCoreError, SealbootError) as exc:
        if isinstance(exc, BotoCoreError) and name not in creator.created:
            # A create that timed out may still have happened server-side; delete is idempotent.
            creator.created.append(name)
        left = creator.undo()
        err = exc if isinstance(exc, SealbootError) else wrap(exc, f"creating {name}")
        if left:
            err.message += (
                f"; {len(left)} fragment(s) could not be removed and need "
                f"'sealboot delete' or 'sweep': {', '.join(left)}"
            )
        else:
            err.message += f"; removed the {len(creator.created)} fragment(s) this run created"
        raise err from exc
    log.info(
        "sealed %d bytes (%d gzipped) into %d fragment(s)", len(userdata), len(stream), len(chunks)
    )
    return manifest
