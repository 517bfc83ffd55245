"""Reading the toolkit's inputs and writing its outputs: bounded reads, all-or-nothing writes.

Example::

    >>> write_all([("m1.json", b"{}"), (None, b"user data")], sys.stdout)
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
from collections.abc import Sequence
from typing import TextIO

from sealboot.errors import InputError
from sealboot_agent.wire import MANIFEST_MAX_BYTES, Manifest, WireError

log = logging.getLogger(__name__)

WRITE_HINT = "check that the output path is writable and its disk has room, then run again"


def read_input(path: str, stdin: TextIO, limit: int) -> bytes:
    """The bytes of *path* (stdin for ``-``); InputError past *limit* (it may be /dev/zero)."""
    try:
        if path == "-":
            if hasattr(stdin, "buffer"):
                data: bytes = stdin.buffer.read(limit + 1)
            else:
                data = stdin.read(limit + 1).encode()
        else:
            with open(path, "rb") as fh:
                data = fh.read(limit + 1)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from exc
    if len(data) > limit:
        raise InputError(f"{path} is over {limit} bytes, the most this command reads")
    return data


def _to_stdout(path: str | None) -> bool:
    return path is None or path == "-"


def _in_place(path: str) -> bool:
    """True for an existing device or pipe (``/dev/stdout``, ``/dev/null``): written as it is,
    since there is nothing to rename over."""
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return False


def _check_output(path: str | None, flag: str) -> None:
    """Refuse an output that cannot be written, before anything is created."""
    if path is None or path == "-":
        return
    try:
        if _in_place(path):
            if os.path.isdir(path):
                raise InputError(f"{flag} {path} is a directory; name a file in it")
            if not os.access(path, os.W_OK):
                raise InputError(f"{flag} {path} is not writable")
            return
    except OSError as exc:  # a parent that is a file, a directory we may not search
        raise InputError(f"{flag} {path}: {exc.strerror}") from exc
    real = os.path.realpath(path)
    parent = os.path.dirname(real)
    if not os.path.isdir(parent):
        raise InputError(f"{flag} {path}: the directory {parent} does not exist")
    # A file is written next to its place and renamed over it: the directory must be writable.
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {path}: cannot create files in {parent} (permission denied)")


def check_outputs(outputs: Sequence[tuple[str | None, str]]) -> None:
    """Refuse outputs that cannot be written, or that would land on the same place."""
    for path, flag in outputs:
        _check_output(path, flag)
    places = [("stdout" if _to_stdout(p) else os.path.realpath(str(p)), f) for p, f in outputs]
    for i, (place, flag) in enumerate(places):
        for other, other_flag in places[i + 1 :]:
            if place == other:
                where = "standard output" if place == "stdout" else place
                raise InputError(f"{flag} and {other_flag} would both write to {where}")


def write_all(outputs: Sequence[tuple[str | None, bytes]], stdout: TextIO) -> None:
    """Write every output or none: files through a temporary file renamed into place once all
    are written, devices and pipes in place, standard output last (it cannot be taken back)."""
    staged: list[tuple[str, str]] = []
    placed: list[str] = []
    current = ""
    try:
        for path, data in outputs:
            if path is None or path == "-":
                continue
            current = path
            if _in_place(path):
                with open(path, "wb") as fh:
                    fh.write(data)
                continue
            real = os.path.realpath(path)
            tmp = os.path.join(
                os.path.dirname(real), f".{os.path.basename(real)}.{secrets.token_hex(4)}.tmp"
            )
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            staged.append((tmp, real))
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        for tmp, real in staged:
            current = real
            os.replace(tmp, real)
            placed.append(real)
        current = "standard output"
        for path, data in outputs:
            if _to_stdout(path):
                stdout.flush()
                if hasattr(stdout, "buffer"):
                    stdout.buffer.write(data)
                    stdout.buffer.flush()
                else:
                    stdout.write(data.decode("utf-8", "replace"))
                    stdout.flush()
    except BaseException as exc:
        # Nothing half-written stays: the caller undoes its own work (sealed fragments) too.
        for tmp, real in staged:
            with contextlib.suppress(OSError):
                os.unlink(real if real in placed else tmp)
        if isinstance(exc, OSError):
            raise InputError(f"cannot write {current}: {exc.strerror}", hint=WRITE_HINT) from exc
        raise
    for path, data in outputs:
        log.debug("wrote %d bytes to %s", len(data), "stdout" if _to_stdout(path) else path)


def write_output(path: str | None, data: str | bytes, stdout: TextIO) -> None:
    write_all([(path, data.encode() if isinstance(data, str) else data)], stdout)


def read_manifest(path: str, stdin: TextIO, *, scoped: bool = False) -> Manifest:
    """The manifest in *path*; *scoped*: also check that its fragments are its own (before a
    delete, as the agent checks before its fetch and delete)."""
    try:
        manifest = Manifest.from_json(
            read_input(path, stdin, MANIFEST_MAX_BYTES).decode("utf-8", "replace")
        )
        if scoped:
            manifest.check_scope()
    except WireError as exc:
        raise InputError(f"{path}: {exc}") from exc
    return manifest
