"""The agent as an image runs it: this tree's artifact (``packaging/build_dist.py``) behind the
wrapper that ``packaging/install.sh`` installs, on the system's ``python3``, unpacked and
byte-compiled beforehand as ``install.sh`` does.

Example::

    >>> agent = installed_agent(work)   # work/agent/bin/sealboot-agent
    >>> subprocess.run([str(agent), "--version"])
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGING = REPO / "packaging"
sys.path.insert(0, str(PACKAGING))
import build_dist  # noqa: E402 - packaging/build_dist.py is a script, not a package

# Where install.sh puts the artifact; the wrapper names it.
IMAGE_PYZ = "/usr/lib/sealboot/sealboot-agent.pyz"
SYSTEM_PYTHON = "/usr/bin/python3"


def wrapper_for(pyz: Path, extract_to: Path, python: str = SYSTEM_PYTHON) -> str:
    """install.sh's wrapper for *python*, pointed at *pyz* and a private extraction root."""
    text = build_dist.wrapper_text(python)
    lines = text.splitlines()
    execs = [i for i, line in enumerate(lines) if line.startswith("exec ")]
    if lines[0] != "#!/bin/sh" or len(execs) != 1 or IMAGE_PYZ not in lines[execs[0]]:
        raise RuntimeError(f"install.sh --print-wrapper changed shape:\n{text}")
    lines[execs[0]] = lines[execs[0]].replace(IMAGE_PYZ, str(pyz))
    # shiv honours SHIV_ROOT over the root baked into the artifact (/var/cache/sealboot-agent).
    lines[execs[0] : execs[0]] = [f"SHIV_ROOT={extract_to}", "export SHIV_ROOT"]
    return "\n".join(lines) + "\n"


def installed_agent(work: Path, python: str = SYSTEM_PYTHON) -> Path:
    """Build the artifact, install its wrapper under *work*, unpack and compile it once."""
    base = work / "agent"
    build_dist.build(base / "dist", build_dist.default_wheel_cache(), packages=False)
    pyz = base / "dist" / build_dist.PYZ_NAME
    cache = base / "cache"
    agent = base / "bin" / "sealboot-agent"
    agent.parent.mkdir(parents=True)
    agent.write_text(wrapper_for(pyz, cache, python))
    agent.chmod(0o755)
    # As install.sh --prepare: the first run unpacks, then the image's Python compiles, so no
    # measured boot pays for either.
    subprocess.run([str(agent), "--version"], capture_output=True, timeout=120, check=True)
    subprocess.run(
        [python, "-I", "-m", "compileall", "-q", str(cache)],
        capture_output=True,
        timeout=300,
        check=True,
    )
    return agent
