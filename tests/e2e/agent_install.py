"""Install sealboot-agent into an instance root the way an AMI build would.

The root's own ``python3`` runs the agent. Its dependencies (boto3, botocore, requests and theirs)
are pure wheels resolved for *that* Python (3.9 on Debian 11, 3.11 on 12, 3.13 on 13) and
installed with ``pip install --target`` into ``/opt/sealboot/lib``, next to the project's
``agent/sealboot_agent`` package, so nothing of Debian's python3 packages is replaced. A launcher,
``/usr/sbin/sealboot-agent``, runs ``python3 -IS`` (as the shipped wrapper does) with that
directory on ``sys.path``.
Finally the root's Python byte-compiles the tree, which also proves that the agent and every
dependency parse on that Python.

This is the step that ``packaging/install.sh`` will do on a real image build; here the wheels are
resolved by the host's pip (``--python-version``), and kept in a cache outside the repository.

Example::

    >>> install_agent(Path("/mnt/root"), python_version((3, 9, 2)), wheel_cache=cache)
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.e2e.netns import tool

REPO = Path(__file__).resolve().parents[2]
AGENT_SRC = REPO / "agent" / "sealboot_agent"
LIB_DIR = "/opt/sealboot/lib"
LAUNCHER = "/usr/sbin/sealboot-agent"

LAUNCHER_TEXT = f'''#!/usr/bin/python3 -IS
"""sealboot-agent: the agent and its pinned dependencies live in {LIB_DIR}."""
import sys

sys.path.insert(0, "{LIB_DIR}")
from sealboot_agent.cli import entrypoint  # noqa: E402

entrypoint()
'''


@dataclass(frozen=True)
class TargetPython:
    """The interpreter the agent will run on."""

    version: tuple[int, int, int]

    @property
    def short(self) -> str:
        return f"{self.version[0]}.{self.version[1]}"

    def marker_environment(self) -> dict[str, str]:
        """PEP 508 marker values on that interpreter (CPython on x86-64 Linux)."""
        return {
            "python_version": self.short,
            "python_full_version": ".".join(map(str, self.version)),
            "implementation_name": "cpython",
            "platform_python_implementation": "CPython",
            "sys_platform": "linux",
            "os_name": "posix",
            "platform_system": "Linux",
            "platform_machine": "x86_64",
            "extra": "",
        }

    def pip_target_flags(self) -> list[str]:
        """pip flags that make the host's pip pick pure wheels that run on that interpreter."""
        return [
            "--only-binary=:all:",
            "--python-version",
            self.short,
            "--implementation",
            "py",
            "--abi",
            "none",
            "--platform",
            "any",
        ]


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


def agent_requirements(target: TargetPython) -> list[str]:
    """The agent's dependencies for *target*, from the project's own metadata (pyproject)."""
    reqs = importlib.metadata.requires("sealboot") or []
    env = target.marker_environment()
    out: list[str] = []
    for text in reqs:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        req.marker = None
        out.append(str(req))
    return out


def unsatisfied(lib: Path, target: TargetPython) -> list[str]:
    """Requirements of the distributions in *lib*, evaluated for *target*, that *lib* misses.

    pip evaluates environment markers for the Python it runs on, not for ``--python-version``
    (botocore needs ``urllib3<1.27`` on 3.9 only behind such a marker), so the result is checked
    here and the missing pins fed back.
    """
    env = target.marker_environment()
    installed = {
        canonicalize_name(d.metadata["Name"]): d.version
        for d in importlib.metadata.distributions(path=[str(lib)])
    }
    missing: list[str] = []
    for dist in importlib.metadata.distributions(path=[str(lib)]):
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            have = installed.get(canonicalize_name(req.name))
            if have is None or not req.specifier.contains(have, prereleases=True):
                req.marker = None
                missing.append(str(req))
    return sorted(set(missing))


def _pip(args: Sequence[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def install_dependencies(lib: Path, target: TargetPython, wheel_cache: Path) -> list[str]:
    """``pip install --target lib`` the agent's dependencies; return the pins that were added.

    The wheels come from *wheel_cache* (offline, so a warm cache is fast and reproducible); only
    when it cannot satisfy the requirements does pip download into it from the index.
    """
    wheel_cache.mkdir(parents=True, exist_ok=True)
    flags = target.pip_target_flags()
    pins: list[str] = []
    for _ in range(4):
        reqs = agent_requirements(target) + pins
        if lib.exists():
            shutil.rmtree(lib)
        install = [
            "install",
            "--no-index",
            "--find-links",
            str(wheel_cache),
            "--target",
            str(lib),
            "--no-compile",
            "--no-warn-script-location",
            *flags,
            *reqs,
        ]
        res = _pip(install)
        if res.returncode != 0:
            dl = _pip(["download", "--dest", str(wheel_cache), *flags, *reqs])
            if dl.returncode != 0:
                raise RuntimeError(f"pip download {reqs} for Python {target.short}:\n{dl.stderr}")
            if lib.exists():
                shutil.rmtree(lib)
            res = _pip(install)
            if res.returncode != 0:
                raise RuntimeError(f"pip install {reqs} for Python {target.short}:\n{res.stderr}")
        missing = unsatisfied(lib, target)
        if not missing:
            return pins
        pins = sorted(set(pins) | set(missing))
    raise RuntimeError(f"no consistent set of wheels for Python {target.short}: {missing}")


def install_agent(
    root: Path, target: TargetPython, wheel_cache: Path, agent_src: Path = AGENT_SRC
) -> None:
    """Install the agent, its dependencies and the launcher into *root*, then byte-compile."""
    lib = root / LIB_DIR.lstrip("/")
    lib.parent.mkdir(parents=True, exist_ok=True)
    install_dependencies(lib, target, wheel_cache)
    shutil.rmtree(lib / "bin", ignore_errors=True)  # console scripts of dependencies
    shutil.copytree(
        agent_src, lib / agent_src.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    launcher = root / LAUNCHER.lstrip("/")
    launcher.parent.mkdir(parents=True, exist_ok=True)
    launcher.write_text(LAUNCHER_TEXT)
    os.chmod(launcher, 0o755)  # noqa: S103 - a program in /usr/sbin
    for path in [lib.parent, *lib.parent.rglob("*")]:
        os.lchown(path, 0, 0)
    res = subprocess.run(
        [tool("chroot"), str(root), "/usr/bin/python3", "-I", "-m", "compileall", "-q", LIB_DIR],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if res.returncode != 0:
        raise RuntimeError(
            f"python {target.short} in {root} cannot compile {LIB_DIR}:\n{res.stdout}{res.stderr}"
        )
