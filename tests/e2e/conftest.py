"""Fixtures for the e2e tests: cached rootfs, baked images, the instance network, instances.

Everything is started here and stopped here: the rootfs is built (or found in the cache) by
``scripts/e2e/rootfs.sh``, the agent is baked into a per-run layer, each test module gets its own
network namespace with moto server and the IMDS emulator, and every instance's overlayfs is
unmounted when its test ends.

Environment:
    SEALBOOT_CACHE       cache root for rootfs, wheels and cloud-init sources
                         (default /var/cache/sealboot)
    SEALBOOT_E2E_SUITES  Debian suites to boot (default: bullseye bookworm trixie)
    SEALBOOT_E2E_RELEASES  cloud-init releases to boot: suites and upstream versions
                         (default: the suites, sid, 22.2.2 23.4.4 24.1.7 24.4.1)
    SEALBOOT_CLOUD_INIT_SOURCES  directory of the upstream release archives
                         (default: ../shared/cloud-init beside the repository, if any)
    CI=true              missing upstream sources fail the run instead of leaving releases out
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import NOTICES, TIMINGS, Image, Images, Instance, InstanceNetwork


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    if os.geteuid() != 0:
        pytest.fail("the e2e tests need root (debootstrap, overlayfs, namespaces, chroot)")
    return Images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InstanceNetwork]:
    """A network namespace with moto on 127.0.0.1:5000 and IMDS on 169.254.169.254:80."""
    with InstanceNetwork(tmp_path_factory.mktemp("net")) as net:
        yield net


@pytest.fixture
def aws(network: InstanceNetwork) -> InstanceNetwork:
    """The network with an empty AWS account, a fresh instance role, and IMDS hits cleared."""
    network.reset()
    return network


@pytest.fixture
def new_instance(aws: InstanceNetwork, tmp_path: Path) -> Iterator[Callable[[Image], Instance]]:
    """Make instances of an image; each is a new overlay, unmounted at the end of the test."""
    made: list[Instance] = []

    def make(image: Image) -> Instance:
        inst = Instance(image, tmp_path / f"instance-{len(made)}", aws)
        made.append(inst)
        return inst.start()

    yield make
    for inst in made:
        inst.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print what the e2e steps cost (rootfs builds, image bakes, boots) and what was not run."""
    for notice in NOTICES:
        terminalreporter.section("e2e: NOT COVERED in this run", sep="!", red=True, bold=True)
        terminalreporter.write_line(notice, red=True, bold=True)
    if not TIMINGS:
        return
    terminalreporter.section("e2e timings")
    for t in TIMINGS:
        terminalreporter.write_line(f"{t.seconds:8.2f}s  {t.what}")
