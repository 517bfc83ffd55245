"""Durable files: the atomic 0600 writer, the per-instance state file, and the run lock.

Example::

    >>> write_durable(Path("/etc/secret-userdata.txt"), b"#cloud-config\\n")
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from sealboot_agent.errors import StateError, WriteError, shown

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


# Set by confined_to() for one run: the root every write below defaults to (see _walk).
_confined_root: Path | None = None
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# The state file is written by the agent itself and stays well under this: 1024 fragment names
# of 512 characters, twice, plus an error message naming them.
STATE_MAX_BYTES = 8 << 20


@contextlib.contextmanager
def confined_to(root: Path) -> Iterator[None]:
    """Within the block, files written without an explicit ``root=`` stay under *root*."""
    global _confined_root
    old, _confined_root = _confined_root, root
    try:
        yield
    finally:
        _confined_root = old


def _root(root: Path | None) -> Path:
    if root is not None:
        return root
    return _confined_root if _confined_root is not None else Path("/")


def _why(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on the device"
    if exc.errno == errno.EROFS:
        return "the file system is read-only"
    return os.strerror(exc.errno) if exc.errno else str(exc)


def _path(path: Path) -> str:
    """A path for a message: escaped like any outside text, but long enough to be whole."""
    return shown(path, limit=4096)


def _is_symlink(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _walk(
    directory: Path, root: Path, *, create: bool, target: Path | None = None, verb: str = "write"
) -> int:
    """A descriptor of *directory*, reached from *root* one component at a time; caller closes.

    Under any root but ``/`` no symbolic link is followed, so nothing is reached outside the
    root through one (a chroot's ``/var/run -> /run`` would point at the host's ``/run``). Under
    ``/`` symlinks are followed: they cannot lead out of it, and real systems have some on
    these paths (``/var/run``, ``/var/log`` on another volume). Missing directories are created
    0700 when *create* is set. Raises WriteError naming *target* (default: *directory*) for a
    symlink or ``..``, else OSError.
    """
    what = f"cannot {verb} {_path(target or directory)}"
    try:
        inside = directory.relative_to(root)
    except ValueError:
        raise WriteError(f"{what}: it is not under the root {_path(root)}") from None
    if ".." in inside.parts:
        raise WriteError(f"{what}: it has a '..' component, which could leave the root")
    follow = os.path.realpath(root) == "/"
    flags = _DIR_FLAGS if follow else _DIR_FLAGS | os.O_NOFOLLOW
    fd = os.open(str(root), _DIR_FLAGS)
    here = root
    try:
        for name in inside.parts:
            here = here / name
            try:
                nxt = os.open(name, flags, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):  # another run made it meanwhile
                    os.mkdir(name, 0o700, dir_fd=fd)
                nxt = os.open(name, flags, dir_fd=fd)
            except OSError as exc:
                if (
                    not follow
                    and exc.errno in (errno.ELOOP, errno.ENOTDIR)
                    and _is_symlink(fd, name)
                ):
                    raise WriteError(
                        f"{what}: {_path(here)} is a symbolic link, and under --root "
                        f"{_path(root)} sealboot follows none (it could lead out of the root)"
                    ) from exc
                raise
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_private_dirs(path: Path, *, root: Path | None = None) -> None:
    """Create *path* and missing parents under *root* as 0700 (existing ones are left as they are).

    Raises WriteError when it cannot, and for a symlink under a root other than ``/``.
    """
    base = _root(root)
    old = os.umask(0o077)
    try:
        os.close(_walk(path, base, create=True))
    except OSError as exc:
        raise WriteError(f"cannot create {_path(path)}: {_why(exc)}") from exc
    finally:
        os.umask(old)


def write_durable(path: Path, data: bytes, mode: int = 0o600, *, root: Path | None = None) -> None:
    """Write *data* to *path* atomically: temp file 0600, fsync, rename, fsync the directory.

    *path* must be under *root* (default: the root of confined_to(), else ``/``); no symlink
    under a root other than ``/`` is followed, and the file itself is never one.
    """
    base = _root(root)
    name = path.name
    tmp = f".{name}.sealboot-tmp"
    old = os.umask(0o077)
    dir_fd = -1
    try:
        if not name or name == "..":
            raise WriteError(f"cannot write {_path(path)}: not a file name")
        dir_fd = _walk(path.parent, base, create=True, target=path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, mode, dir_fd=dir_fd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        # rename() replaces a symlink at *path* instead of following it.
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.fsync(dir_fd)
    except (OSError, WriteError) as exc:
        if dir_fd >= 0:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
        if isinstance(exc, WriteError):
            raise
        raise WriteError(f"cannot write {_path(path)}: {_why(exc)}") from exc
    finally:
        os.umask(old)
        if dir_fd >= 0:
            os.close(dir_fd)


def open_under(path: Path, flags: int, mode: int = 0o600, *, root: Path | None = None) -> int:
    """``os.open`` of *path* under *root* without following a symlink out of it; caller closes.

    The file itself is never a symlink (``O_NOFOLLOW``); missing directories are created 0700
    when *flags* has ``O_CREAT``. Raises WriteError for a symlink component, else OSError.
    """
    dir_fd = _walk(path.parent, _root(root), create=bool(flags & os.O_CREAT), target=path)
    try:
        return os.open(path.name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def read_under(path: Path, limit: int, *, root: Path | None = None) -> bytes:
    """At most *limit* + 1 bytes of the regular file *path*, reached as :func:`open_under` does."""
    # O_NONBLOCK: a FIFO planted there must not hang the boot.
    fd = open_under(path, os.O_RDONLY | os.O_NONBLOCK, root=root)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return fh.read(limit + 1)


def remove_under(path: Path, *, root: Path | None = None) -> None:
    """Remove the file *path* under *root* if it is there, through no symlink out of the root."""
    try:
        dir_fd = _walk(path.parent, _root(root), create=False, target=path, verb="remove")
    except FileNotFoundError:
        return
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path.name, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


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
        """Parse a state file; raise ValueError unless every field has the type it is written
        with (the file is under the root, so it is read as input from outside)."""
        try:
            data = json.loads(text)
        except RecursionError:
            raise ValueError("nested too deeply") from None
        if not isinstance(data, dict):
            raise ValueError("state is not a JSON object")
        v = data.get("v")
        if not isinstance(v, int) or isinstance(v, bool) or v != STATE_VERSION:
            raise ValueError("unknown state version or phase")
        if data.get("phase") not in PHASES:
            raise ValueError("unknown state version or phase")
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key, value in fields.items():
            _check_field(key, value)
        return cls(**fields)


_STR_FIELDS = ("manifest_id", "phase", "outcome", "agent_version")
_OPTIONAL_STR_FIELDS = ("instance_id", "region", "output", "output_sha256", "handoff")
# time.gmtime() takes any second up to the end of year 9999; status formats each one.
_TIME_MAX = 253402300799


def _check_field(key: str, value: Any) -> None:
    """Raise ValueError naming *key* unless *value* has the type State writes for it."""
    if key in _STR_FIELDS:
        ok = isinstance(value, str)
    elif key in _OPTIONAL_STR_FIELDS:
        ok = value is None or isinstance(value, str)
    elif key in ("fragments", "left_behind"):
        ok = isinstance(value, list) and all(isinstance(item, str) for item in value)
    elif key == "times":
        ok = isinstance(value, dict) and all(
            isinstance(t, (int, float))
            and not isinstance(t, bool)
            and math.isfinite(t)
            and 0 <= t <= _TIME_MAX
            for t in value.values()
        )
    elif key == "error":
        ok = value is None or isinstance(value, dict)
    else:  # "v", checked by the caller
        ok = True
    if not ok:
        raise ValueError(f"field {key!r} does not have the type the agent writes")


class StateStore:
    """Reads and writes ``state.json`` under the state directory, durably.

    *root* is the filesystem root the directory is under (default: the root of confined_to(),
    else ``/``); nothing is read or written through a symlink out of it.
    """

    def __init__(
        self,
        directory: Path,
        wall: Callable[[], float] = time.time,
        *,
        root: Path | None = None,
    ):
        self.directory = directory
        self.file = directory / "state.json"
        self.wall = wall
        self.root = root

    def load(self) -> State | None:
        try:
            # O_NONBLOCK: a FIFO planted as state.json must not hang the boot.
            fd = open_under(self.file, os.O_RDONLY | os.O_NONBLOCK, root=self.root)
        except FileNotFoundError:
            return None
        except (OSError, WriteError) as exc:
            why = exc.message if isinstance(exc, WriteError) else _why(exc)
            raise StateError(f"cannot read {_path(self.file)}: {why}") from exc
        try:
            with os.fdopen(fd, "rb") as fh:
                if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                    raise StateError(f"cannot read {_path(self.file)}: not a regular file")
                raw = fh.read(STATE_MAX_BYTES + 1)
        except OSError as exc:
            raise StateError(f"cannot read {_path(self.file)}: {_why(exc)}") from exc
        try:
            if len(raw) > STATE_MAX_BYTES:
                raise ValueError(f"over {STATE_MAX_BYTES} bytes")
            return State.from_json(raw.decode("utf-8"))
        except (ValueError, TypeError) as exc:
            raise StateError(
                f"{_path(self.file)} is corrupt ({shown(exc)})",
                hint="move it aside and rerun; the fragments are deleted only after a verified "
                "durable write, so a rerun is safe",
            ) from exc

    def save(self, state: State, phase: str | None = None) -> None:
        if phase is not None:
            state.phase = phase
            state.times[phase] = round(self.wall(), 3)
        write_durable(self.file, state.to_json().encode(), root=self.root)

    def done_marker(self, manifest_id: str) -> Path:
        return self.directory / "done" / manifest_id

    @contextlib.contextmanager
    def lock(
        self,
        wait: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Iterator[None]:
        """Hold an exclusive lock so two runs never interleave; wait at most *wait* seconds.

        Raises StateError when the lock file cannot be opened (say, it is a directory), and
        WriteError when the state directory is reached through a symlink out of the root.
        """
        path = self.directory / "lock"
        old = os.umask(0o077)
        try:
            fd = open_under(path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK, 0o600, root=self.root)
        except OSError as exc:
            raise StateError(f"cannot open the lock {_path(path)}: {_why(exc)}") from exc
        finally:
            os.umask(old)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StateError(f"cannot use the lock {_path(path)}: not a regular file")
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
