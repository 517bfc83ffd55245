"""The cloud-init releases the e2e suite boots, and where their sources come from.

- Debian's own package in each suite of ``SEALBOOT_E2E_SUITES`` (bullseye 20.4, bookworm 22.4,
  trixie 25.1) and in sid (26.x, what Ubuntu 22.04/24.04 receive as updates).
- Upstream releases (``scripts/e2e/cloud-init/RELEASES``) standing for distributions we have no
  image of: their ``cloudinit/`` replaces Debian's in the bookworm rootfs (an overlay layer,
  :meth:`tests.e2e.harness.Images.upstream_layer`). The sources come from
  ``scripts/e2e/cloud_init_sources.py``: verified archives (``../shared/cloud-init`` or
  ``$SEALBOOT_CLOUD_INIT_SOURCES``), the cache, or a clone of the tag. When there are none, the
  upstream releases are left out and the run's summary says so (``harness.NOTICES``); with
  ``CI=true`` they are kept and their tests fail.

A release's :attr:`Release.id` is its test id and the name :class:`~tests.e2e.harness.Images`
takes (``"bookworm"``, ``"24.4.1 (RHEL 9.6-10)"``; ``"24.4.1 (RHEL 9.6-10)+awscli"`` runs it in
``bookworm+awscli``). ``SEALBOOT_E2E_RELEASES`` (Debian suites and upstream versions, e.g.
``"bookworm sid 24.4.1"``) narrows the list.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOURCES_SCRIPT = REPO / "scripts" / "e2e" / "cloud_init_sources.py"
NEWEST_SUITE = "sid"
# Short names for test ids; scripts/e2e/cloud-init/RELEASES has the long ones.
UPSTREAM_LABELS = {
    "22.2.2": "AL2023",
    "23.4.4": "RHEL 9.4-9.5",
    "24.1.7": "Ubuntu 24.04",
    "24.4.1": "RHEL 9.6-10",
}
DEBIAN_NAMES = {
    "bullseye": "Debian 11",
    "bookworm": "Debian 12",
    "trixie": "Debian 13",
    "sid": "Debian unstable",
}


@dataclass(frozen=True)
class Release:
    """One cloud-init release: Debian's package in *suite*, or *upstream* over *suite*."""

    id: str
    suite: str
    upstream: str | None = None

    @property
    def stands_for(self) -> str:
        if self.upstream is not None:
            return UPSTREAM_LABELS[self.upstream]
        return DEBIAN_NAMES.get(self.suite, self.suite)


def upstream_release(version: str) -> Release:
    return Release(f"{version} ({UPSTREAM_LABELS[version]})", "bookworm", version)


UPSTREAM = {v: upstream_release(v) for v in UPSTREAM_LABELS}
BY_ID = {r.id: r for r in UPSTREAM.values()}


def resolve(name: str) -> tuple[Release, str]:
    """The release an image name means, and the extra packages of its rootfs (``+awscli``)."""
    base, plus, extra = name.partition("+")
    release = BY_ID.get(base) or UPSTREAM.get(base) or Release(base, base)
    return release, plus + extra


@dataclass(frozen=True)
class Sources:
    """What ``cloud_init_sources.py`` answered: trees found, releases missing, and mismatches."""

    found: dict[str, Path]
    missing: dict[str, str]
    errors: dict[str, str]

    def tree(self, version: str) -> Path:
        """The verified source tree of *version*; fails the test when there is none."""
        if version not in self.found:
            import pytest

            why = self.errors.get(version) or self.missing.get(version, "not asked for")
            pytest.fail(
                f"cloud-init {version} sources: {why} (scripts/e2e/cloud_init_sources.py; "
                "SEALBOOT_CLOUD_INIT_SOURCES names a directory of the release archives)"
            )
        return self.found[version]


@functools.cache
def upstream_sources() -> Sources:
    """Run the sources script once per run (it reuses its cache: ~0.2 s when nothing changed)."""
    res = subprocess.run(
        [sys.executable, str(SOURCES_SCRIPT), "--json", *UPSTREAM_LABELS],
        capture_output=True,
        text=True,
        timeout=2400,
        check=False,
    )
    try:
        answer = json.loads(res.stdout) if res.returncode in (0, 1, 3) else None
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        # A broken setting (SEALBOOT_CLOUD_INIT_SOURCES is no directory, an unwritable cache):
        # every release fails with the script's last words.
        why = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"rc {res.returncode}"
        return Sources({}, {}, dict.fromkeys(UPSTREAM_LABELS, why))
    return Sources(
        {v: Path(p) for v, p in answer["sources"].items()}, answer["missing"], answer["errors"]
    )


def release_ids(suites: list[str], notices: list[str]) -> list[str]:
    """The release ids to boot: Debian's *suites*, sid, and the upstream releases with sources.

    Upstream releases without sources are left out with a line in *notices*, unless CI=true
    (CI always has them: their tests then fail and say why).
    """
    default = [*suites, *([NEWEST_SUITE] if NEWEST_SUITE not in suites else []), *UPSTREAM]
    wanted = os.environ.get("SEALBOOT_E2E_RELEASES", " ".join(default)).split()
    if not wanted:
        raise ValueError("SEALBOOT_E2E_RELEASES is empty; name at least one release")
    out: list[str] = []
    left_out: dict[str, str] = {}
    for name in wanted:
        if name not in UPSTREAM:
            out.append(name)
            continue
        sources = upstream_sources()
        if name in sources.found or name in sources.errors or os.environ.get("CI") == "true":
            out.append(UPSTREAM[name].id)
        else:
            left_out[name] = sources.missing.get(name, "no sources")
    if left_out:
        notices.append(
            f"cloud-init {', '.join(left_out)} (Amazon Linux 2023, RHEL 9/10, Ubuntu 24.04): "
            f"no sources ({next(iter(left_out.values()))}). Run "
            "scripts/e2e/cloud_init_sources.py online, or set SEALBOOT_CLOUD_INIT_SOURCES to a "
            "directory of the release archives."
        )
    return out
