"""The fetch run: IMDS -> credentials -> fetch -> verify -> write -> delete -> hand-off.

Example::

    >>> done = run_fetch(AgentConfig(manifest=m), Deps())
    >>> done.state.outcome, len(done.payload)
    ('ok', 20480)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from sealboot_agent import __version__
from sealboot_agent.config import AgentConfig
from sealboot_agent.errors import AgentError, DeleteError, ImdsError
from sealboot_agent.handoff import HANDOFFS, Prepared, cloud_init_instance_id
from sealboot_agent.imds import Deadline, Imds
from sealboot_agent.state import State, StateStore, write_durable
from sealboot_agent.stores import STORES
from sealboot_agent.wire import sha256_hex

if TYPE_CHECKING:
    import requests

    from sealboot_agent.retry import RetryPolicy

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


@dataclass(frozen=True)
class Done:
    """A finished run: its state, and the verified user data (None when an earlier run of
    this manifest finished the hand-off, so this one read nothing)."""

    state: State
    payload: bytes | None


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


def run_fetch(cfg: AgentConfig, deps: Deps) -> Done:
    """Run every step once, resuming where a crashed run stopped; raise AgentError on failure."""
    started = deps.clock()
    mid = cfg.manifest.manifest_id
    states = StateStore(cfg.path(cfg.state_dir), deps.wall, root=cfg.root)
    with states.lock(wait=min(60.0, cfg.deadline), clock=deps.clock, sleep=deps.sleep):
        prev = states.load()
        if prev is not None and prev.manifest_id == mid and prev.phase == "done":
            log.info(
                "user data was already handed over on this instance (%s); nothing to do",
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(prev.times.get("done", 0))),
            )
            write_durable(states.done_marker(mid), b"", root=cfg.root)
            return Done(prev, None)
        resumed, copy = _resumable(prev, cfg, mid)
        if resumed is not None:
            state = resumed
            log.info("resuming: %s was written and verified by an earlier run", cfg.output)
        else:
            state = State(
                manifest_id=mid,
                fragments=list(cfg.manifest.fragments),
                output=cfg.output,
                handoff=cfg.handoff,
                agent_version=__version__,
            )
        state.outcome, state.error = "running", None
        run = _Run(cfg, deps, states, state, Deadline(cfg.deadline, deps.clock, deps.sleep))
        try:
            payload = run.steps(copy)
        except AgentError as exc:
            run.failed(exc)
            raise
        log.info("done in %.2fs", deps.clock() - started)
        return Done(state, payload)


class _Run:
    """One run's steps over its configuration, state file and deadline."""

    def __init__(
        self, cfg: AgentConfig, deps: Deps, states: StateStore, state: State, deadline: Deadline
    ):
        self.cfg = cfg
        self.deps = deps
        self.states = states
        self.state = state
        self.deadline = deadline
        self.store = STORES[cfg.manifest.backend]
        self.handoff = HANDOFFS[cfg.handoff]

    def steps(self, copy: bytes | None) -> bytes:
        """Every step after the lock; *copy* is a verified earlier write (a resumed run)."""
        policy = self._policy()
        if copy is None:
            self._save("started")
        client = self._connect()
        payload = self._fetch(client, policy) if copy is None else copy
        # Every refusal happens here, while every fragment still exists, resumed runs included
        # (an earlier run may have used another hand-off that shares the output path).
        iid = cloud_init_instance_id(self.cfg) or self.state.instance_id or ""
        prepared = self.handoff.prepare(self.cfg, payload, iid)
        if copy is None:
            self._save("verified")
            self._write(payload)
        self._delete(client, policy)
        self._hand_off(prepared)
        return payload

    def failed(self, exc: AgentError) -> None:
        """Record *exc* in the state file (best effort: the error itself is what matters)."""
        self.state.outcome = "failed"
        self.state.error = {
            "exit_code": exc.exit_code,
            "kind": type(exc).__name__,
            "message": exc.message,
            "fragment": exc.fragment,
        }
        try:
            self.states.save(self.state)
        except AgentError as save_exc:
            log.warning("could not record the failure in the state file: %s", save_exc)

    def _pause(self, point: str) -> None:
        if self.cfg.pause_at != point:
            return
        # Crash-safety tests kill the agent here; say so where the test can see it.
        write_durable(self.states.directory / "paused", point.encode(), root=self.cfg.root)
        log.warning("test hook: paused at %s", point)
        end = self.deps.clock() + 120
        while self.deps.clock() < end:
            self.deps.sleep(0.05)

    def _save(self, phase: str) -> None:
        self.states.save(self.state, phase)
        self._pause(phase)

    def _policy(self) -> RetryPolicy:
        # Imported here so the no-op path on every later boot never pays for botocore.
        from sealboot_agent.retry import RetryPolicy

        # IAM needs a little while to honour a freshly attached instance profile; only then is
        # AccessDenied worth retrying.
        grace = max(0.0, self.cfg.denied_grace - self.deps.uptime())
        if grace > 0:
            log.debug("AccessDenied is retried for %.0fs more (IAM propagation after boot)", grace)
        until = self.deadline.clock() + min(grace, self.deadline.remaining())
        return RetryPolicy(self.deadline, denied_until=until)

    def _connect(self) -> Any:
        """IMDS identity and credentials, then the store's client."""
        from sealboot_agent.aws import make_client, session_from_imds

        imds = Imds(self.cfg.imds_endpoint, self.deps.http_factory(), self.deadline)
        t0 = self.deps.clock()
        target = self.cfg.target
        self.state.instance_id = imds.instance_id()
        self.state.region = region = target.region or imds.region()
        creds = imds.role_credentials()
        log.info(
            "IMDSv2: instance %s, region %s, instance profile role %s",
            self.state.instance_id,
            region,
            creds.role,
        )
        log.debug("IMDS took %.3fs over %d request(s)", self.deps.clock() - t0, imds.requests)
        self._save("credentials")
        if self.deps.client_factory is not None:
            client = self.deps.client_factory(region=region, endpoint_url=target.endpoint_url)
        else:
            client = make_client(
                session_from_imds(imds, creds),
                self.store.service,
                region=region,
                endpoint_url=target.endpoint_url,
                deadline=self.deadline,
                use_fips=target.use_fips,
            )
        if self.deadline.expired():
            raise ImdsError("the deadline passed while reading instance metadata")
        return client

    def _fetch(self, client: Any, policy: RetryPolicy) -> bytes:
        """Every fragment, assembled and verified."""
        from sealboot_agent.assemble import assemble
        from sealboot_agent.fetch import fetch_fragments

        manifest = self.cfg.manifest
        t0 = self.deps.clock()
        chunks = fetch_fragments(self.store, client, manifest.fragments, policy)
        log.info(
            "fetched %d fragment(s), %d bytes, in %.2fs",
            len(chunks),
            sum(len(c) for c in chunks),
            self.deps.clock() - t0,
        )
        self._save("fetched")
        payload = assemble(manifest, chunks, max_size=self.cfg.max_size)
        if manifest.sha256:
            log.info("verified sha256 %s; user data is %d bytes", manifest.sha256, len(payload))
        else:
            log.info(
                "gzip stream intact (CAPA format carries no digest); user data is %d bytes",
                len(payload),
            )
        return payload

    def _write(self, payload: bytes) -> None:
        cfg = self.cfg
        write_durable(cfg.path(cfg.output), payload, root=cfg.root)
        self._pause("output-on-disk")
        self.state.output_sha256 = sha256_hex(payload)
        log.info("wrote %s (%d bytes, mode 0600, fsynced)", cfg.output, len(payload))
        self._save("written")

    def _delete(self, client: Any, policy: RetryPolicy) -> None:
        from sealboot_agent.delete import delete_fragments

        names = self.cfg.manifest.fragments
        left = delete_fragments(self.store, client, names, policy)
        self.state.left_behind = sorted(left)
        if left:
            detail = "; ".join(f"{n}: {why}" for n, why in sorted(left.items()))
            msg = f"{len(left)} fragment(s) could not be deleted: {detail}"
            if self.cfg.require_delete:
                raise DeleteError(msg)
            log.warning(
                "%s. The user data is safe on disk; remove them with 'sealboot delete' "
                "or 'sealboot sweep'",
                msg,
            )
        else:
            log.info("deleted %d fragment(s)", len(names))
        self._save("deleted")

    def _hand_off(self, prepared: Prepared) -> None:
        self.handoff.apply(self.cfg, prepared)
        self._save("handed_off")
        write_durable(self.states.done_marker(self.state.manifest_id), b"", root=self.cfg.root)
        self.state.outcome = "ok"
        self._save("done")
