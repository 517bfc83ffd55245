"""The agent's log: one line per record, UTC, to stderr and (once) to cloud-init's output log.

Example::

    >>> configure_logging(1, Path("/var/log/cloud-init-output.log"), sys.stderr)
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TextIO

from sealboot_agent.errors import WriteError, shown
from sealboot_agent.state import open_under

log = logging.getLogger("sealboot_agent")


class _UtcFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(
            fmt="%(asctime)s sealboot-agent[%(process)d] %(levelname)s: %(message)s",
            datefmt="%Y-%m-%dT%H:%M:%SZ",
        )
        self.converter = time.gmtime

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        # One record, one line: whatever slipped into a message cannot forge another line or
        # drive the terminal (tracebacks, appended after this, keep their lines).
        record.message = shown(record.message, limit=1 << 16)
        return super().formatMessage(record)


def _same_file(stream: TextIO, path: Path) -> bool:
    try:
        a = os.fstat(stream.fileno())
        b = os.stat(path)
    except (OSError, ValueError, AttributeError):
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class _AppendHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A handler over a log file the agent opened itself (under --root, no symlink followed)."""

    def close(self) -> None:
        try:
            self.acquire()
            try:
                self.stream.close()
            finally:
                self.release()
        finally:
            super().close()


def configure_logging(
    verbose: int, log_file: Path | None, stderr: TextIO, *, root: Path | None = None
) -> None:
    """Log to stderr and to *log_file*, but only once when stderr already is that file.

    *log_file* is opened under *root* (default ``/``) without following a symlink out of it;
    when it cannot be, the agent logs to stderr only and says why (a log is not worth a boot).
    """
    logger = logging.getLogger("sealboot_agent")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    fmt = _UtcFormatter()
    console = logging.StreamHandler(stderr)
    console.setFormatter(fmt)
    logger.addHandler(console)
    if log_file is not None and not _same_file(stderr, log_file):
        old = os.umask(0o077)
        try:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK
            fd = open_under(log_file, flags, 0o600, root=root)
            handler = _AppendHandler(os.fdopen(fd, "a", encoding="utf-8"))
        except WriteError as exc:
            log.warning("%s; logging to stderr only", exc.message)
        except OSError as exc:
            log.warning(
                "cannot append to %s (%s); logging to stderr only",
                shown(log_file, limit=4096),
                exc.strerror,
            )
        else:
            handler.setFormatter(fmt)
            logger.addHandler(handler)
        finally:
            os.umask(old)
    # botocore's own debug output can echo response bodies (secret values); keep it quiet.
    logging.getLogger("botocore").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
