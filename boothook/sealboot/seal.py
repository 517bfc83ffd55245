"""Seal user data into Secrets Manager fragments and return the manifest that names them.

Example::

    >>> m = seal(b"#cloud-config\\n", namespace="default", cluster="c1", machine="m1",
    ...          config=SealConfig(region="eu-west-1"))
    >>> m.count
    1
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from sealboot.aws import Client, aws_client, wrap
from sealboot.delete import delete_fragments
from sealboot.errors import NOTHING_CREATED, InputError, SealbootError
from sealboot.names import CLUSTER_TAG, TAG_KEY_MAX, component, fragment_names, fragment_tags
from sealboot_agent import __version__
from sealboot_agent.stores import EXISTS, STORES, Store, error_code, request_id
from sealboot_agent.wire import (
    BACKEND_SECRETS_MANAGER,
    FORMAT_CAPA,
    FORMAT_NATIVE,
    MAX_FRAGMENTS,
    REGION_RE,
    Manifest,
    WireError,
    check_endpoint_url,
    gzip_deterministic,
    sha256_hex,
)

log = logging.getLogger(__name__)

DEFAULT_TTL = 24 * 3600
MAX_USERDATA = 64 * 1024 * 1024


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
    backend: str = BACKEND_SECRETS_MANAGER
    tier: str = "standard"  # ssm only: standard (4 KB values) or advanced (8 KB)
    use_fips: bool = False


# Per thread: did an attempt of the current call go out and get no answer? botocore retries
# inside one call, so the exception a call ends with says nothing about the attempts before it:
# a create that timed out (and may have happened) can be followed by a refused connection. Only
# a request that never left this machine (no credentials, a refused connection) is certain not
# to have created anything. Thread-local because one client may serve many threads.
_attempts = threading.local()


def _on_attempt(caught_exception: Any = None, **_: Any) -> None:
    """botocore's needs-retry hook, called after every attempt of every call."""
    if caught_exception is not None and not isinstance(caught_exception, BotoConnectionError):
        _attempts.unanswered = True


def _watch(client: Client) -> bool:
    """Hook _on_attempt into *client* (once: the unique id makes it idempotent); False when
    the client has no botocore events (a test fake)."""
    events: Any = getattr(getattr(client, "meta", None), "events", None)
    if not hasattr(events, "register"):
        return False
    events.register("needs-retry", _on_attempt, unique_id="sealboot-seal-attempts")
    return True


class _Creator:
    """Creates fragments one by one and remembers them, so a failure can undo its own work.

    Each create is one call: botocore retries it (throttling, 5xx, timeouts) and nothing here
    retries on top.
    """

    def __init__(self, store: Store, client: Client, cfg: SealConfig, clock: Callable[[], float]):
        self.store = store
        self.client = client
        self.cfg = cfg
        self.clock = clock
        self.created: list[str] = []
        # Creates that failed without an answer: they may have happened server-side.
        self.uncertain: list[str] = []
        self.watching = _watch(client)

    def create(self, name: str, data: bytes, tags: dict[str, str], index: int, total: int) -> None:
        started = self.clock()
        _attempts.unanswered = False
        try:
            resp = self.store.create(
                self.client,
                name,
                data,
                tags=tags,
                description=f"sealboot fragment {index + 1}/{total}; deleted at first boot",
                kms_key_id=self.cfg.kms_key_id,
                tier=self.cfg.tier,
            )
        except ClientError as exc:
            if error_code(exc) not in EXISTS:
                self._maybe_created(name, exc)
                raise
            # The name is new (a random token or UUID), so only this call can have made it: an
            # attempt that botocore retried after no answer did in fact create it.
            log.info("fragment %s exists: an unanswered attempt of this create made it", name)
            self.created.append(name)
            return
        except BotoCoreError as exc:
            self._maybe_created(name, exc)
            raise
        self.created.append(name)
        log.debug(
            "created fragment %d/%d %s (%d bytes) in %.0f ms, request id %s",
            index + 1,
            total,
            name,
            len(data),
            (self.clock() - started) * 1000,
            request_id(resp) or "-",
        )

    def _maybe_created(self, name: str, exc: Exception) -> None:
        """Remember *name* for the undo when its failed create may still have happened."""
        if self.watching:
            maybe = bool(getattr(_attempts, "unanswered", False))
        else:  # a client without botocore's events: judge by the final exception alone
            maybe = isinstance(exc, HTTPClientError)
        if maybe:
            log.debug("the create of %s may have happened server-side; checking in the undo", name)
            self.uncertain.append(name)

    def undo(self) -> Undone:
        """Delete what this run created, or may have created."""
        out = Undone(backend=self.store.backend)
        result = delete_fragments(self.store, self.client, self.created + self.uncertain)
        for name in self.created + self.uncertain:
            sure = name in self.created
            if name in result.failed:
                err = result.failed[name].message
                log.error("could not remove fragment %s after a failed seal: %s", name, err)
                (out.left if sure else out.unknown).append(name)
            elif sure or name in result.deleted:
                out.removed.append(name)
        return out


@dataclass
class Undone:
    """What undoing a failed seal achieved: fragments removed, left behind, or perhaps left."""

    backend: str = BACKEND_SECRETS_MANAGER
    removed: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # may exist: create and delete both failed

    def outcome(self) -> str:
        """What a failed seal left in AWS, and how to clean up without a manifest."""
        if not (self.left or self.unknown):
            if not self.removed:
                return NOTHING_CREATED
            return (
                f"{len(self.removed)} fragment(s) were created and removed again; "
                "nothing is left in AWS"
            )
        parts = []
        if self.left:
            parts.append(
                f"{len(self.left)} fragment(s) were created and could NOT be removed, so they "
                f"hold the sealed user data: {', '.join(self.left)}"
            )
        if self.unknown:
            parts.append(
                f"{len(self.unknown)} fragment(s) may have been created (AWS did not answer) "
                f"and could not be checked: {', '.join(self.unknown)}"
            )
        if self.removed:
            parts.append(f"{len(self.removed)} other(s) were removed")
        parts.append(
            "no manifest was written, so 'sealboot delete' cannot find them: delete each by "
            f"name with '{STORES[self.backend].delete_command}' (same region and endpoint), or "
            "'sealboot sweep' deletes them once their sealboot.io/expires-at tag has passed"
        )
        return "; ".join(parts)


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
    check: Callable[[Manifest], None] | None = None,
    commit: Callable[[Manifest], None] | None = None,
) -> Manifest:
    """Gzip, digest, split and store *userdata*; return the manifest (all or nothing).

    *check* runs once the manifest is known, before anything is created (render it there: a
    manifest that cannot be rendered then costs nothing). *commit* runs once every fragment
    exists (write the manifest there): if it fails, the fragments are removed again. Every
    error's ``outcome`` says what was left in AWS.
    """
    started = clock()
    try:
        manifest, chunks, tags, store, client = _prepare(
            userdata, namespace, cluster, machine, role, config, client, wall
        )
        if check is not None:
            check(manifest)
    except SealbootError as exc:
        if exc.outcome is None:
            exc.outcome = NOTHING_CREATED
        raise
    creator = _Creator(store, client, config, clock)
    names = manifest.fragments
    name = names[0]
    try:
        for i, (name, chunk) in enumerate(zip(names, chunks)):
            creator.create(name, chunk, tags, i, len(chunks))
        if commit is not None:
            commit(manifest)
    except (Exception, KeyboardInterrupt) as exc:
        # Any failure, and Ctrl-C. Other BaseExceptions pass like a kill would (tests use one
        # to stand for SIGKILL): sweep finds the fragments a kill leaves by their tags.
        undone = creator.undo()
        if isinstance(exc, SealbootError):
            err = exc
        elif isinstance(exc, (ClientError, BotoCoreError)):
            err = wrap(exc, f"creating {name}")
        elif isinstance(exc, Exception):
            err = SealbootError(f"unexpected {type(exc).__name__} while sealing: {exc}")
        else:  # Ctrl-C: stop, but say what is left
            log.error("interrupted: %s", undone.outcome())
            raise
        err.outcome = undone.outcome()
        raise err from exc
    log.info(
        "sealed %d bytes (%d gzipped) into %d fragment(s)",
        len(userdata),
        manifest.size,
        len(chunks),
    )
    log.debug("sealing took %.0f ms", (clock() - started) * 1000)
    return manifest


def _prepare(
    userdata: bytes,
    namespace: str,
    cluster: str,
    machine: str,
    role: str,
    config: SealConfig,
    client: Client | None,
    wall: Callable[[], float],
) -> tuple[Manifest, list[bytes], dict[str, str], Store, Client]:
    """Check everything and build the manifest, fragment values, tags and client; create
    nothing."""
    if config.format not in (FORMAT_NATIVE, FORMAT_CAPA):
        raise InputError(f"unknown format {config.format!r}; use native or capa")
    if not userdata:
        raise InputError("the user data is empty (0 bytes): there is nothing to seal")
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
    if len(CLUSTER_TAG.format(cluster=cluster)) > TAG_KEY_MAX:
        raise InputError(
            f"cluster name {cluster!r} is too long for the CAPA cluster tag "
            f"(at most {TAG_KEY_MAX - len(CLUSTER_TAG.format(cluster=''))} chars)"
        )
    if config.backend not in STORES:
        raise InputError(f"unknown backend {config.backend!r}; use {' or '.join(STORES)}")
    store = STORES[config.backend]
    if config.tier not in {tier for each in STORES.values() for tier in each.tiers}:
        raise InputError(f"unknown SSM tier {config.tier!r}; use standard or advanced")
    if config.tier not in store.tiers:
        raise InputError(
            f"the {config.tier} tier is an SSM Parameter Store tier; it needs backend ssm"
        )
    stream = gzip_deterministic(userdata)
    chunks = store.encode(stream, config.format, config.tier)
    if len(chunks) > MAX_FRAGMENTS:
        raise InputError(
            f"user data needs {len(chunks)} fragments; a manifest names at most {MAX_FRAGMENTS}"
        )
    names = fragment_names(
        config.backend, config.format, config.root, namespace, cluster, machine, len(chunks)
    )
    expires = datetime.datetime.fromtimestamp(wall() + config.ttl_seconds, datetime.timezone.utc)
    tags = fragment_tags(cluster, machine, namespace, role, config.format, expires, config.tags)
    if client is None:
        client = aws_client(
            store.service,
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
    log.debug(
        "user data %d bytes, gzipped %d, sha256 %s; %d fragment(s) of at most %d bytes "
        "(%s, %s format)",
        len(userdata),
        len(stream),
        manifest.sha256,
        len(chunks),
        max(len(c) for c in chunks),
        config.backend,
        config.format,
    )
    return manifest, chunks, tags, store, client
