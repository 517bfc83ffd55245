"""Fixtures of the image tests: dist/ built from this tree, images baked with install.sh, the
instance network of the e2e harness (moto on 127.0.0.1:5000, IMDS on 169.254.169.254:80).

Everything a test needs is made here and torn down here; slow things are cached outside the
repository by the tools that make them (wheels and rootfs under ``$SEALBOOT_CACHE``).

Environment:
    SEALBOOT_CACHE       cache root for rootfs and wheels (default /var/cache/sealboot)
    SEALBOOT_E2E_SUITES  Debian suites to install into (default: bullseye bookworm trixie)
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import InstanceNetwork, Rootfs, build_rootfs
from tests.image.bake import MEASUREMENTS, Baked, Dist, bake_with_install_sh, build_dist_into


def _need(tool: str, how: str) -> None:
    if shutil.which(tool, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin") is None:
        pytest.fail(f"{tool} is not installed: {how}")


@pytest.fixture(scope="session")
def as_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("the image tests need root (overlayfs, chroot, namespaces, dpkg, rpm)")


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    """``make dist`` of this tree, built into the run's tmp dir (wheels come from the cache)."""
    return build_dist_into(tmp_path_factory.mktemp("dist") / "dist")


@pytest.fixture(scope="session")
def system_tools() -> None:
    how = "run scripts/system-deps.sh (make test does)"
    _need("rpm", how)
    _need("packer", how)
    _need("dpkg-deb", "it comes with dpkg")


class Rootfses:
    """Cached Debian rootfs per suite (scripts/e2e/rootfs.sh), found or built on first use."""

    def __init__(self) -> None:
        self._made: dict[str, Rootfs] = {}

    def __call__(self, suite: str) -> Rootfs:
        if suite not in self._made:
            self._made[suite] = build_rootfs(suite)
        return self._made[suite]


@pytest.fixture(scope="session")
def rootfs(as_root: None) -> Rootfses:
    return Rootfses()


class BakedImages:
    """Each suite's rootfs provisioned with install.sh, once per run."""

    def __init__(self, rootfs: Rootfses, dist: Dist, workdir: Path):
        self.rootfs = rootfs
        self.dist = dist
        self.workdir = workdir
        self._baked: dict[str, Baked] = {}

    def __call__(self, suite: str) -> Baked:
        if suite not in self._baked:
            self._baked[suite] = bake_with_install_sh(
                self.rootfs(suite), self.workdir / suite, self.dist
            )
        return self._baked[suite]


@pytest.fixture(scope="session")
def baked(rootfs: Rootfses, dist: Dist, tmp_path_factory: pytest.TempPathFactory) -> BakedImages:
    return BakedImages(rootfs, dist, tmp_path_factory.mktemp("baked"))


@pytest.fixture(scope="module")
def network(as_root: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InstanceNetwork]:
    """A network namespace with moto on 127.0.0.1:5000 and IMDS on 169.254.169.254:80."""
    with InstanceNetwork(tmp_path_factory.mktemp("net")) as net:
        yield net


@pytest.fixture
def aws(network: InstanceNetwork) -> InstanceNetwork:
    """The network with an empty AWS account, a fresh instance role, and IMDS hits cleared."""
    network.reset()
    return network


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print what the image tests measured: sizes, install times, the agent's peak RSS."""
    if not MEASUREMENTS:
        return
    terminalreporter.section("image measurements")
    width = max(len(m.what) for m in MEASUREMENTS)
    for m in MEASUREMENTS:
        terminalreporter.write_line(f"{m.what:<{width}}  {m.value}")
