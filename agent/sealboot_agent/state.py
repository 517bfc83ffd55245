"""Durable files: the atomic 0600 writer, the per-instance state file, and the run lock.

Example::

    >>> write_durable(Path("/etc/secret-userdata.txt"), b"#cloud-config\\n")
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from sealboot_agent.errors import StateError, WriteError

STATE_VERSION = 1
PHASES = (
    "started",
    "credentials",
    "fetched",
    "verified",
    "written",
    "deleted",
    "handed_off",
    "done",
)


def _fsync_dir(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_private_dirs(path: Path) -> None:
    """Create *path* and missing parents as 0700 (existing ones are left as they are)."""
    old = os.umask(0o077)
    try:
        path.mkdir(parents=True, exist_ok=True)
    finally:
        os.umask(old)


def write_durable(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write *data* to *path* atomically: temp file 0600, fsync, rename, fsync the directory."""
    tmp = path.with_name(f".{path.name}.sealboot-tmp")
    old = os.umask(0o077)
    try:
        make_private_dirs(path.parent)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            why = "no space left on the device"
        elif exc.errno == errno.EROFS:
            why = "the file system is read-only"
        raise WriteError(f"cannot write {path}: {why}") from exc
    finally:
        os.umask(old)


@dataclass
class State:
    """What happened on this instance, keyed by the manifest it was for."""

    manifest_id: str
    phase: str = "started"
    outcome: str = "running"
    fragments: list[str] = field(default_factory=list)
    times: dict[str, float] = field(default_factory=dict)
    instance_id: str | None = None
    region: str | None = None
    output: str | None = None
    output_sha256: str | None = None
    handoff: str | None = None
    left_behind: list[str] = field(default_factory=list)
    error: dict[str, Any] | None = None
    agent_version: str = ""
    v: int = STATE_VERSION

    def reached(self, phase: str) -> bool:
        return PHASES.index(self.phase) >= PHASES.index(phase)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> State:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("state is not a JSON object")
        if data.get("v") != STATE_VERSION or data.get("phase") not in PHASES:
            raise ValueError("unknown state version or phase")
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


class StateStore:
    """Reads and writes ``state.json`` under the state directory, durably."""

    def __init__(self, directory: Path, wall: Callable[[], float] = time.time):
        self.directory = directory
        self.file = directory / "state.json"
        self.wall = wall

    def load(self) -> State | None:
        try:
            text = self.file.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read {self.file}: {exc.strerror}") from exc
        try:
            return State.from_json(text)
        except (ValueError, TypeError) as exc:
            raise StateError(
                f"{self.file} is corrupt ({exc})",
                hint="move it aside and rerun; the fragments are deleted only after a verified "
                "durable write, so a rerun is safe",
            ) from exc

    def save(self, state: State, phase: str | None = None) -> None:
        if phase is not None:
            state.phase = phase
            state.times[phase] = round(self.wall(), 3)
        write_durable(self.file, state.to_json().encode())

    def done_marker(self, manifest_id: str) -> Path:
        return self.directory / "done" / manifest_id

    @contextlib.contextmanager
    def lock(
        self,
        wait: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Iterator[None]:
        """Hold an exclusive lock so two runs never interleave; wait at most *wait* seconds."""
        make_private_dirs(self.directory)
        fd = os.open(str(self.directory / "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            end = clock() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if clock() >= end:
                        raise StateError(
                            "another sealboot-agent run holds the lock",
                            hint="wait for it to finish; 'sealboot-agent status' shows progress",
                        ) from None
                    sleep(0.1)
            yield
        finally:
            os.close(fd)
