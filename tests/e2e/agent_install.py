"""Install sealboot-agent into an instance root the way an AMI build does: the artifact of
``make dist`` (``packaging/build_dist.py``, built once per run) and ``packaging/install.sh``, run
as root inside the image (chroot) with a clean environment, as Packer's shell provisioner runs it.

The root's own ``python3`` runs the agent (3.9 on Debian 11, 3.11 on 12, 3.13 on 13). The
boothook-mode images are baked with ``--no-datasource``; the datasource tests add it themselves.

Example::

    >>> pyz = build_artifact(tmp / "dist")
    >>> install_agent(Path("/mnt/root"), pyz)
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.netns import SYSTEM_PATH, tool

REPO = Path(__file__).resolve().parents[2]
PACKAGING = REPO / "packaging"
INSTALL_SH = PACKAGING / "install.sh"
sys.path.insert(0, str(PACKAGING))
import build_dist  # noqa: E402 - packaging/build_dist.py is a script, not a package

__all__ = [
    "INSTALL_SH",
    "PACKAGING",
    "REPO",
    "TargetPython",
    "build_artifact",
    "build_dist",
    "chroot_argv",
    "clean_tmp",
    "install_agent",
    "provision",
    "root_python",
    "run",
]


@dataclass(frozen=True)
class TargetPython:
    """The interpreter the agent will run on."""

    version: tuple[int, int, int]

    @property
    def short(self) -> str:
        return f"{self.version[0]}.{self.version[1]}"


def root_python(root: Path) -> TargetPython:
    """The version of ``ROOT/usr/bin/python3``, asked of that interpreter in a chroot."""
    res = subprocess.run(
        [
            tool("chroot"),
            str(root),
            "/usr/bin/python3",
            "-I",
            "-c",
            "import platform; print(platform.python_version())",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)\S*", res.stdout.strip())
    if not m:
        raise RuntimeError(f"cannot parse the python3 version {res.stdout!r} of {root}")
    return TargetPython((int(m.group(1)), int(m.group(2)), int(m.group(3))))


def build_artifact(out: Path) -> Path:
    """``make dist``'s agent artifact of this tree, built into *out*; returns the .pyz."""
    build_dist.build(out, build_dist.default_wheel_cache(), packages=False)
    return out / build_dist.PYZ_NAME


def chroot_argv(root: Path, argv: Sequence[str], env: Sequence[str] = ()) -> list[str]:
    """*argv* in *root* with a clean environment, as Packer's shell provisioner would run it."""
    return [
        tool("chroot"),
        str(root),
        "/usr/bin/env",
        "-i",
        f"PATH={SYSTEM_PATH}",
        "LANG=C.UTF-8",
        *env,
        *argv,
    ]


def run(argv: Sequence[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def provision(root: Path, pyz: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Packer's file provisioner (artifact and install.sh to /tmp), then its shell provisioner
    (``sh /tmp/install.sh ARGS`` as root in the image)."""
    shutil.copy2(pyz, root / "tmp" / build_dist.PYZ_NAME)
    shutil.copy2(INSTALL_SH, root / "tmp" / "install.sh")
    return run(chroot_argv(root, ["/bin/sh", "/tmp/install.sh", *args]))


def clean_tmp(root: Path) -> None:
    for name in (build_dist.PYZ_NAME, "install.sh"):
        (root / "tmp" / name).unlink(missing_ok=True)


def install_agent(root: Path, pyz: Path) -> None:
    """Install the agent into *root* with install.sh, without the sealboot datasource."""
    try:
        res = provision(root, pyz, "--no-datasource")
    finally:
        clean_tmp(root)
    if res.returncode != 0:
        raise RuntimeError(f"install.sh into {root} exited {res.returncode}:\n{res.stderr}")
