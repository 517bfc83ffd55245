"""Run a child process the way a boot does, and measure it: wall time, CPU time and peak RSS
(from ``wait4``, which also counts the descendants the child waited for, such as the AWS CLI
processes a boothook runs). Every child gets its own process group, and the whole group is
killed if the bench is interrupted or the child overruns its timeout.

Example::

    >>> run = measured(["/bin/true"], env={}, timeout=5)
    >>> run.returncode
    0
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

# Children still running; the bench kills their groups on the way out, whatever happens.
_LIVE: set[int] = set()
_LIVE_LOCK = threading.Lock()


@dataclass(frozen=True)
class Measured:
    returncode: int
    wall: float  # seconds from spawn to reaped
    cpu: float  # user + system seconds of the child and the descendants it waited for
    maxrss_kb: int  # peak resident set of the largest of those processes
    timed_out: bool


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def kill_all() -> None:
    """Kill every child process group this module started that is still running."""
    with _LIVE_LOCK:
        pids = list(_LIVE)
    for pid in pids:
        _kill_group(pid)


def measured(
    cmd: list[str],
    *,
    env: dict[str, str],
    timeout: float,
    cwd: str = "/",
    stdout: Path | None = None,
) -> Measured:
    """Run *cmd* with stdin from /dev/null and its output to *stdout* (or /dev/null)."""
    out = open(stdout, "ab") if stdout else subprocess.DEVNULL  # noqa: SIM115
    try:
        started = time.monotonic()
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        if not isinstance(out, int):
            out.close()
    with _LIVE_LOCK:
        _LIVE.add(proc.pid)
    expired = threading.Event()

    def overrun() -> None:
        expired.set()
        _kill_group(proc.pid)

    timer = threading.Timer(timeout, overrun)
    timer.daemon = True
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
    except BaseException:
        _kill_group(proc.pid)
        with contextlib.suppress(ChildProcessError):
            os.wait4(proc.pid, 0)
        raise
    finally:
        timer.cancel()
        with _LIVE_LOCK:
            _LIVE.discard(proc.pid)
    proc.returncode = os.waitstatus_to_exitcode(status)
    # The boothook's own children (an AWS CLI call in flight) may outlive it; none should.
    _kill_group(proc.pid)
    return Measured(
        returncode=proc.returncode,
        wall=wall,
        cpu=usage.ru_utime + usage.ru_stime,
        maxrss_kb=usage.ru_maxrss,
        timed_out=expired.is_set(),
    )


PROBE = Path(__file__).resolve().parent / "rusage_probe.py"


def probed(
    cmd: list[str], *, env: dict[str, str], timeout: float, report: Path, cwd: str = "/"
) -> Measured:
    """Like :func:`measured`, but the peak RSS, CPU and wall time are the command's own (see
    rusage_probe.py); the probe's own start-up is not counted."""
    outer = measured(
        [sys.executable, "-I", "-S", str(PROBE), str(report), *cmd],
        env=env,
        timeout=timeout,
        cwd=cwd,
    )
    try:
        inner = json.loads(report.read_text())
    except (OSError, ValueError):
        return outer
    return replace(
        outer,
        wall=float(inner["wall"]),
        cpu=float(inner["cpu"]),
        maxrss_kb=int(inner["maxrss_kb"]),
    )
