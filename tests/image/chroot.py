"""testinfra chroot backend, e.g. ``testinfra.get_host(str(root), connection=CHROOT).file(p).mode``.

Each command runs as ``chroot ROOT /usr/bin/env -i PATH=... /bin/sh -c CMD``. testinfra 10
ships a ``chroot`` backend of its own, but it runs ``chroot`` through the host's shell with the
host's whole environment (the virtualenv's ``PATH``, ``VIRTUAL_ENV``, ...), finds ``chroot`` only
on the caller's ``PATH``, and its root check never fires. This one gives the image a clean
environment, as a boot or a provisioner would. Importing this module registers it as
:data:`CHROOT`.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import testinfra.backend
from testinfra.backend.base import BaseBackend, CommandResult

from tests.e2e.netns import SYSTEM_PATH, tool

CHROOT = "sealboot-chroot"


class ChrootBackend(BaseBackend):  # type: ignore[misc]
    NAME = CHROOT

    def __init__(self, hostname: str, *args: Any, timeout: float = 300, **kwargs: Any):
        super().__init__(hostname, *args, **kwargs)
        self.root = Path(hostname)
        self.timeout = float(timeout)

    def run(self, command: str, *args: str, **kwargs: Any) -> CommandResult:
        if not (self.root / "bin" / "sh").exists():
            raise RuntimeError(f"{self.root} is not a root file system (no /bin/sh)")
        cmd = self.get_command(command, *args)
        res = subprocess.run(
            [
                tool("chroot"),
                str(self.root),
                "/usr/bin/env",
                "-i",
                f"PATH={SYSTEM_PATH}",
                "LANG=C.UTF-8",
                "/bin/sh",
                "-c",
                cmd,
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=self.timeout,
            check=False,
        )
        result: CommandResult = self.result(
            res.returncode, self.encode(cmd), res.stdout, res.stderr
        )
        return result


testinfra.backend.BACKENDS.setdefault(CHROOT, f"{__name__}.ChrootBackend")
