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

import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TextIO

from sealboot_agent import userdata
from sealboot_agent.config import DEFAULT_OUTPUT, PRIVATE_OUTPUT
from sealboot_agent.errors import (
    AgentError,
    IntegrityError,
    StateError,
    UnsupportedUserData,
    WriteError,
    shown,
)
from sealboot_agent.state import (
    confined_to,
    make_private_dirs,
    read_under,
    remove_under,
    write_durable,
)
from sealboot_agent.userdata import Part
from sealboot_agent.wire import sha256_hex

if TYPE_CHECKING:
    from sealboot_agent.config import AgentConfig
    from sealboot_agent.state import State

log = logging.getLogger(__name__)

CFG_DIR = userdata.CFG_DIR
CLEANUP_SCRIPT = userdata.CLEANUP_SCRIPT
FAILED_SCRIPT = userdata.FAILED_SCRIPT

Runner = Callable[..., "subprocess.CompletedProcess[bytes]"]


@dataclass(frozen=True)
class Plan:
    parts: tuple[Part, ...]

    def count(self, kind: str) -> int:
        return sum(1 for p in self.parts if p.kind == kind)


def cloud_init_instance_id(cfg: AgentConfig) -> str | None:
    """cloud-init's instance id: $INSTANCE_ID in a boothook, else /var/lib/cloud/instance."""
    if cfg.cloud_init_instance_id:
        return cfg.cloud_init_instance_id
    try:
        target = os.readlink(cfg.path("/var/lib/cloud/instance"))
    except OSError:
        return None
    return os.path.basename(target.rstrip("/")) or None


def handed_over_copy(cfg: AgentConfig, state: State) -> bytes:
    """The verified durable copy, when this run did not read the user data itself."""
    try:
        data = read_under(cfg.path(cfg.output), cfg.max_size, root=cfg.root)
    except (OSError, WriteError) as exc:
        # After the first boot the cleanup script has removed our copy; on a reboot cloud-init
        # may rediscover the datasource (22.4 and 25.1's Ec2 cannot check the instance id) and
        # ask again. cloud-init's own copy of what it was handed is then the durable one.
        copy = _cloud_init_copy(cfg)
        if copy is None:
            raise StateError(
                f"the user data was handed over already and {cfg.output} is gone ({_why(exc)})",
                hint="cloud-init keeps its own copy for this instance; nothing to fetch again",
            ) from exc
        where, data = copy
    else:
        where = cfg.output
    if state.output_sha256 is None or sha256_hex(data) != state.output_sha256:
        raise StateError(f"{where} does not match the digest recorded when it was written")
    return data


def _why(exc: OSError | WriteError) -> str:
    return exc.message if isinstance(exc, WriteError) else str(exc.strerror)


def _cloud_init_copy(cfg: AgentConfig) -> tuple[str, bytes] | None:
    """cloud-init's ``user-data.txt`` of this instance, when there is one to read."""
    instance_id = cloud_init_instance_id(cfg)
    if instance_id is None:
        return None
    path = instance_dir(cfg.root, instance_id) / "user-data.txt"
    try:
        return f"/{path.relative_to(cfg.root)}", read_under(path, cfg.max_size, root=cfg.root)
    except (OSError, WriteError):
        return None


def refusal(exc: userdata.Refused) -> AgentError:
    """The agent error for a refusal of the user-data parser (size cap: 6, anything else: 11)."""
    if exc.too_large:
        return IntegrityError(
            str(exc), hint="raise --max-size if this payload is expected; nothing was deleted"
        )
    return UnsupportedUserData(str(exc))


def plan_cloud_init(data: bytes, budget: int = 16 << 20) -> Plan:
    """Split user data as cloud-init would, or refuse before anything happens."""
    try:
        return Plan(tuple(userdata.split(data, userdata.Budget(budget))))
    except userdata.Refused as exc:
        raise refusal(exc) from None


def checked_instance_id(instance_id: str) -> str:
    """*instance_id*, refused (exit 11) unless it is one plain path segment."""
    try:
        userdata.scripts_dir(instance_id)
    except userdata.Refused as exc:
        raise UnsupportedUserData(
            str(exc), hint="check /var/lib/cloud/instance and $INSTANCE_ID; nothing was deleted"
        ) from None
    return instance_id


def instance_dir(root: Path, instance_id: str) -> Path:
    return root / "var/lib/cloud/instances" / checked_instance_id(instance_id)


def _writer(root: Path) -> userdata.Write:
    def write(inner: str, data: bytes, mode: int) -> None:
        write_durable(root / inner.lstrip("/"), data, mode, root=root)

    return write


def apply_cloud_init(
    plan: Plan,
    root: Path,
    instance_id: str,
    *,
    plaintext: str | None,
    keep_plaintext: bool,
    run: Runner = subprocess.run,
) -> None:
    """Place each part for the current boot; nested boothooks run now."""

    def boothook(part: Part, iid: str) -> None:
        _run_boothook(part, root, iid, run)

    placed = userdata.place(
        list(plan.parts),
        checked_instance_id(instance_id),
        _writer(root),
        boothook,
        plaintext=plaintext,
        keep_plaintext=keep_plaintext,
    )
    for part in plan.parts:
        where = "runs now" if part.kind == "boothook" else "placed"
        log.info("part %d: %s, %d bytes, %s", part.index + 1, part.kind, part.size, where)
    log.debug("placed %d file(s) under %s", len(placed), root)
    clear_failure(root, instance_id)


def _run_boothook(part: Part, root: Path, instance_id: str, run: Runner) -> None:
    hooks = root / "var/lib/sealboot/boothooks"
    make_private_dirs(hooks, root=root)
    path = hooks / f"boothook-{part.index:03d}"
    write_durable(path, userdata.boothook_body(part.payload), 0o700, root=root)
    env = dict(os.environ, INSTANCE_ID=instance_id)
    log.info("part %d: running the nested boothook", part.index + 1)
    try:
        res = run([str(path)], cwd=str(root), env=env, stdin=subprocess.DEVNULL, check=False)
    except OSError as exc:
        log.warning("part %d: the nested boothook could not run: %s", part.index + 1, exc.strerror)
    else:
        if res.returncode != 0:
            # cloud-init itself only logs a failing boothook; do the same.
            log.warning("part %d: the nested boothook exited %d", part.index + 1, res.returncode)
    finally:
        remove_under(path, root=root)


def schedule_cleanup(root: Path, instance_id: str, paths: list[str]) -> None:
    """Remove *paths* once the final stage has run (the datasource hand-off's private copy)."""
    script = instance_dir(root, instance_id) / "scripts" / CLEANUP_SCRIPT
    write_durable(script, userdata.cleanup_text(paths), 0o700, root=root)


def report_failure(root: Path, instance_id: str, message: str) -> None:
    """Make a failed fetch visible in ``cloud-init status`` (a failing user script)."""
    script = instance_dir(root, instance_id) / "scripts" / FAILED_SCRIPT
    write_durable(script, userdata.failure_text(message), 0o700, root=root)


def clear_failure(root: Path, instance_id: str) -> None:
    remove_under(instance_dir(root, instance_id) / "scripts" / FAILED_SCRIPT, root=root)


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
        log.warning("hand-off capa: 'systemctl restart cloud-init' failed: %s", shown(res.stderr))
    else:
        log.info("hand-off capa: asked systemd to restart cloud-init")


@dataclass(frozen=True)
class Prepared:
    """What a hand-off decided before any fragment is deleted."""

    payload: bytes
    instance_id: str
    plan: Plan | None = None


@dataclass(frozen=True)
class Handoff:
    """A hand-off mode: prepare (plan, refuse before any delete), apply, deliver, report failure.

    Example::

        >>> prepared = HANDOFFS["cloud-init"].prepare(cfg, payload, "i-0123456789abcdef0")
        >>> HANDOFFS["cloud-init"].apply(cfg, prepared)
    """

    name: str
    default_output: str
    description: str

    def prepare(self, cfg: AgentConfig, payload: bytes, instance_id: str) -> Prepared:
        """Everything that can refuse, with every fragment still in place."""
        return Prepared(payload, instance_id)

    def apply(self, cfg: AgentConfig, prepared: Prepared) -> None:
        """Hand the user data on, once the fragments are deleted."""
        log.info("hand-off %s: %s", self.name, self.description)

    def deliver(
        self, cfg: AgentConfig, state: State, payload: bytes | None, stdout: TextIO
    ) -> None:
        """After the run: what the caller's standard output gets (nothing, but for stdout)."""

    def report_failure(self, cfg: AgentConfig, exc: AgentError) -> None:
        """Only the cloud-init hand-off tells cloud-init; the others leave it to the caller."""


class CloudInitHandoff(Handoff):
    def prepare(self, cfg: AgentConfig, payload: bytes, instance_id: str) -> Prepared:
        plan = plan_cloud_init(payload, cfg.max_size - len(payload))
        # Where the parts go must be reachable (no symlink out of the root) before any delete.
        make_private_dirs(cfg.path(CFG_DIR), root=cfg.root)
        make_private_dirs(instance_dir(cfg.root, instance_id) / "scripts", root=cfg.root)
        return Prepared(payload, instance_id, plan)

    def apply(self, cfg: AgentConfig, prepared: Prepared) -> None:
        assert prepared.plan is not None  # noqa: S101 - prepare() always plans
        apply_cloud_init(
            prepared.plan,
            cfg.root,
            prepared.instance_id,
            plaintext=cfg.output,
            keep_plaintext=cfg.keep_plaintext,
        )
        plan = prepared.plan
        log.info(
            "hand-off cloud-init: %d cloud-config, %d script, %d boothook part(s)%s",
            plan.count("cloud-config"),
            plan.count("script"),
            plan.count("boothook"),
            "" if cfg.keep_plaintext else "; plaintext removed after the final stage",
        )

    def report_failure(self, cfg: AgentConfig, exc: AgentError) -> None:
        # cloud-init only logs a failing boothook; a failing user script makes status say error.
        instance_id = cloud_init_instance_id(cfg)
        if instance_id is None:
            return
        try:
            with confined_to(cfg.root):
                report_failure(cfg.root, instance_id, f"{exc.message} (exit {exc.exit_code})")
        except AgentError as err:
            log.warning("could not record the failure for cloud-init: %s", err.message)


class StdoutHandoff(Handoff):
    def prepare(self, cfg: AgentConfig, payload: bytes, instance_id: str) -> Prepared:
        if not cfg.keep_plaintext:
            make_private_dirs(instance_dir(cfg.root, instance_id) / "scripts", root=cfg.root)
        return Prepared(payload, instance_id)

    def apply(self, cfg: AgentConfig, prepared: Prepared) -> None:
        if not cfg.keep_plaintext:
            schedule_cleanup(cfg.root, prepared.instance_id, [cfg.output])
        log.info("hand-off stdout: user data goes to cloud-init through the sealboot datasource")

    def deliver(
        self, cfg: AgentConfig, state: State, payload: bytes | None, stdout: TextIO
    ) -> None:
        # A run that read the user data passes it on as verified; only a run that found the
        # hand-off done reads the durable copy back (the datasource may ask again).
        data = payload if payload is not None else handed_over_copy(cfg, state)
        buffer = getattr(stdout, "buffer", None)
        if buffer is not None:
            buffer.write(data)
            buffer.flush()
        else:
            stdout.write(data.decode("utf-8", "surrogateescape"))


class CapaHandoff(Handoff):
    def apply(self, cfg: AgentConfig, prepared: Prepared) -> None:
        restart_cloud_init(cfg.root)


HANDOFFS: dict[str, Handoff] = {
    h.name: h
    for h in (
        CloudInitHandoff(
            "cloud-init",
            PRIVATE_OUTPUT,
            "parts placed for this boot: cloud-config in /etc/cloud/cloud.cfg.d, scripts for "
            "scripts-user, boothooks run now",
        ),
        CapaHandoff(
            "capa",
            DEFAULT_OUTPUT,
            "CAPA's legacy layout: /etc/secret-userdata.txt, then restart cloud-init so its "
            "#include reads it (fails on stock cloud-init; see README)",
        ),
        StdoutHandoff(
            "stdout",
            PRIVATE_OUTPUT,
            "user data written to standard output for the sealboot cloud-init datasource",
        ),
        Handoff(
            "file",
            DEFAULT_OUTPUT,
            "user data left at the output path (CAPA's location) for the consumer to read",
        ),
        Handoff(
            "none",
            PRIVATE_OUTPUT,
            "user data kept only in sealboot's private state directory; nothing is handed on",
        ),
    )
}
