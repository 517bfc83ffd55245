"""The fetch run: IMDS -> credentials -> fetch -> verify -> write -> delete -> hand-off.

Example::

    >>> state = run_fetch(AgentConfig(manifest=m), Deps())
    >>> state.outcome
    'ok'
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from sealboot_agent import __version__
from sealboot_agent.config import AgentConfig
from sealboot_agent.errors import AgentError, DeleteError, ImdsError
from sealboot_agent.handoff import HANDOFFS
from sealboot_agent.imds import Deadline, Imds
from sealboot_agent.state import State, StateStore, write_durable
from sealboot_agent.wire import BACKEND_SSM, sha256_hex

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)


def _uptime() -> float:
    """Seconds since boot (CLOCK_BOOTTIME counts suspend too, like /proc/uptime)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def _new_http() -> requests.Session:
    import requests

    return requests.Session()


@dataclass
class Deps:
    """What the run touches outside itself; tests inject their own."""

    http_factory: Callable[[], requests.Session] = _new_http
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    uptime: Callable[[], float] = _uptime
    client_factory: Callable[..., Any] | None = None
    counters: dict[str, int] = field(default_factory=dict)


def handed_over_copy(cfg: AgentConfig, state: State) -> bytes:
    """The verified durable copy, for ``--handoff stdout`` (the datasource reads it)."""
    from sealboot_agent.errors import StateError

    try:
        data = cfg.path(cfg.output).read_bytes()
    except OSError as exc:
        raise StateError(
            f"the user data was handed over already and {cfg.output} is gone ({exc.strerror})",
            hint="cloud-init keeps its own copy for this instance; nothing to fetch again",
        ) from exc
    if state.output_sha256 is None or sha256_hex(data) != state.output_sha256:
        raise StateError(f"{cfg.output} does not match the digest recorded when it was written")
    return data


def cloud_init_instance_id(cfg: AgentConfig) -> str | None:
    """cloud-init's instance id: $INSTANCE_ID in a boothook, else /var/lib/cloud/instance."""
    if cfg.cloud_init_instance_id:
        return cfg.cloud_init_instance_id
    try:
        target = os.readlink(cfg.path("/var/lib/cloud/instance"))
    except OSError:
        return None
    return os.path.basename(target.rstrip("/")) or None


def _resumable(
    prev: State | None, cfg: AgentConfig, mid: str
) -> tuple[State, bytes] | tuple[None, None]:
    """A previous run of this manifest that wrote a verified copy we can trust, and that copy."""
    if prev is None or prev.manifest_id != mid or not prev.reached("written"):
        return None, None
    if prev.output != cfg.output or prev.output_sha256 is None:
        return None, None
    try:
        data = cfg.path(cfg.output).read_bytes()
    except OSError:
        data = None
    if data is None or sha256_hex(data) != prev.output_sha256:
        log.warning("previous run wrote %s but it changed or vanished; fetching again", cfg.output)
        return None, None
    return prev, data


def run_fetch(cfg: AgentConfig, deps: Deps) -> State:
    """Run every step once, resuming where a crashed run stopped; raise AgentError on failure."""
    started = deps.clock()
    manifest = cfg.manifest
    mid = manifest.manifest_id
    store = StateStore(cfg.path(cfg.state_dir), deps.wall, root=cfg.root)
    deadline = Deadline(cfg.deadline, deps.clock, deps.sleep)
    with store.lock(wait=min(60.0, cfg.deadline), clock=deps.clock, sleep=deps.sleep):
        prev = store.load()
        if prev is not None and prev.manifest_id == mid and prev.phase == "done":
            log.info(
                "user data was already handed over on this instance (%s); nothing to do",
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(prev.times.get("done", 0))),
            )
            write_durable(store.done_marker(mid), b"", root=cfg.root)
            return prev
        resumed, copy = _resumable(prev, cfg, mid)
        if resumed is not None:
            state = resumed
            log.info("resuming: %s was written and verified by an earlier run", cfg.output)
        else:
            state = State(
                manifest_id=mid,
                fragments=list(manifest.fragments),
                output=cfg.output,
                handoff=cfg.handoff,
                agent_version=__version__,
            )
        state.outcome, state.error = "running", None
        try:
            _steps(cfg, deps, store, state, deadline, copy)
        except AgentError as exc:
            state.outcome = "failed"
            state.error = {
                "exit_code": exc.exit_code,
                "kind": type(exc).__name__,
                "message": exc.message,
                "fragment": exc.fragment,
            }
            try:
                store.save(state)
            except AgentError as save_exc:
                log.warning("could not record the failure in the state file: %s", save_exc)
            raise
        log.info("done in %.2fs", deps.clock() - started)
        return state


def _pause(cfg: AgentConfig, store: StateStore, point: str, deps: Deps) -> None:
    if cfg.pause_at != point:
        return
    # Crash-safety tests kill the agent here; say so where the test can see it.
    write_durable(store.directory / "paused", point.encode(), root=cfg.root)
    log.warning("test hook: paused at %s", point)
    end = deps.clock() + 120
    while deps.clock() < end:
        deps.sleep(0.05)


def _save(cfg: AgentConfig, store: StateStore, state: State, phase: str, deps: Deps) -> None:
    store.save(state, phase)
    _pause(cfg, store, phase, deps)


def _steps(
    cfg: AgentConfig,
    deps: Deps,
    store: StateStore,
    state: State,
    deadline: Deadline,
    copy: bytes | None,
) -> None:
    # Imported here so the no-op path on every later boot never pays for botocore.
    from sealboot_agent.assemble import assemble
    from sealboot_agent.aws import make_client, session_from_imds
    from sealboot_agent.delete import delete_fragments
    from sealboot_agent.fetch import fetch_fragments
    from sealboot_agent.retry import RetryPolicy
    from sealboot_agent.ssm import delete_parameters, fetch_parameters

    manifest = cfg.manifest
    handoff = HANDOFFS[cfg.handoff]
    # IAM needs a little while to honour a freshly attached instance profile; only then is
    # AccessDenied worth retrying.
    grace = max(0.0, cfg.denied_grace - deps.uptime())
    policy = RetryPolicy(deadline, denied_until=deadline.clock() + min(grace, deadline.remaining()))
    if grace > 0:
        log.debug("AccessDenied is retried for %.0fs more (IAM propagation after boot)", grace)
    if copy is None:
        _save(cfg, store, state, "started", deps)
    imds = Imds(cfg.imds_endpoint, deps.http_factory(), deadline)
    t0 = deps.clock()
    state.instance_id = imds.instance_id()
    region = cfg.effective_region or imds.region()
    state.region = region
    creds = imds.role_credentials()
    log.info(
        "IMDSv2: instance %s, region %s, instance profile role %s",
        state.instance_id,
        region,
        creds.role,
    )
    log.debug("IMDS took %.3fs over %d request(s)", deps.clock() - t0, imds.requests)
    _save(cfg, store, state, "credentials", deps)

    ssm = manifest.backend == BACKEND_SSM
    fetch = fetch_parameters if ssm else fetch_fragments
    delete = delete_parameters if ssm else delete_fragments
    if deps.client_factory is not None:
        client = deps.client_factory(region=region, endpoint_url=cfg.effective_endpoint)
    else:
        session = session_from_imds(imds, creds)
        client = make_client(
            session,
            "ssm" if ssm else "secretsmanager",
            region=region,
            endpoint_url=cfg.effective_endpoint,
            deadline=deadline,
            use_fips=cfg.use_fips,
        )
    if deadline.expired():
        raise ImdsError("the deadline passed while reading instance metadata")

    if copy is None:
        t0 = deps.clock()
        chunks = fetch(client, manifest.fragments, policy)
        log.info(
            "fetched %d fragment(s), %d bytes, in %.2fs",
            len(chunks),
            sum(len(c) for c in chunks),
            deps.clock() - t0,
        )
        _save(cfg, store, state, "fetched", deps)
        payload = assemble(manifest, chunks, max_size=cfg.max_size)
        if manifest.sha256:
            log.info("verified sha256 %s; user data is %d bytes", manifest.sha256, len(payload))
        else:
            log.info(
                "gzip stream intact (CAPA format carries no digest); user data is %d bytes",
                len(payload),
            )
    else:
        payload = copy
    # Every refusal happens here, while every fragment still exists, resumed runs included
    # (an earlier run may have used another hand-off that shares the output path).
    iid = cloud_init_instance_id(cfg) or state.instance_id or ""
    prepared = handoff.prepare(cfg, payload, iid)
    if copy is None:
        _save(cfg, store, state, "verified", deps)
        write_durable(cfg.path(cfg.output), payload, root=cfg.root)
        _pause(cfg, store, "output-on-disk", deps)
        state.output_sha256 = sha256_hex(payload)
        log.info("wrote %s (%d bytes, mode 0600, fsynced)", cfg.output, len(payload))
        _save(cfg, store, state, "written", deps)

    left = delete(client, manifest.fragments, policy)
    state.left_behind = sorted(left)
    if left:
        detail = "; ".join(f"{n}: {why}" for n, why in sorted(left.items()))
        msg = f"{len(left)} fragment(s) could not be deleted: {detail}"
        if cfg.require_delete:
            raise DeleteError(msg)
        log.warning(
            "%s. The user data is safe on disk; remove them with 'sealboot delete' "
            "or 'sealboot sweep'",
            msg,
        )
    else:
        log.info("deleted %d fragment(s)", len(manifest.fragments))
    _save(cfg, store, state, "deleted", deps)

    handoff.apply(cfg, prepared)
    _save(cfg, store, state, "handed_off", deps)
    write_durable(store.done_marker(state.manifest_id), b"", root=cfg.root)
    state.outcome = "ok"
    _save(cfg, store, state, "done", deps)
