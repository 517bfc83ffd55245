"""Run a command as a *grandchild* and report its own peak RSS and CPU time as JSON.

Why not ``wait4`` on a direct child: Linux carries the parent's peak RSS into a forked (or
vforked) child's ``ru_maxrss`` across ``exec``, so a small program started from a big bench
process reports the bench's peak. This probe is started with ``python -I -S`` (stdlib only,
about 10 MB), forks, and the child execs the command, so the command's ``ru_maxrss`` is its
own. The same approach as ``/usr/bin/time -v``, without needing it installed.

Usage::

    python -I -S bench/rusage_probe.py OUT.json CMD [ARG...]
"""

from __future__ import annotations

import json
import os
import sys
import time


def main(argv: list[str]) -> int:
    out, cmd = argv[0], argv[1:]
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the command: stdin, stdout and stderr as given to the probe
        try:
            os.execvp(cmd[0], cmd)  # noqa: S606 - exec of the measured command is the point
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    wall = time.monotonic() - started
    code = os.waitstatus_to_exitcode(status)
    with open(out, "w") as fh:
        json.dump(
            {
                "returncode": code,
                "wall": wall,
                "cpu": usage.ru_utime + usage.ru_stime,
                "maxrss_kb": usage.ru_maxrss,
            },
            fh,
        )
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
