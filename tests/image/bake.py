"""Build dist/ and bake images with ``packaging/install.sh`` the way Packer would.

An image here is what the e2e harness calls one (:class:`tests.e2e.harness.Image`): a cached
Debian rootfs plus a read-only layer. The layer is the upper directory of an overlayfs over the
rootfs into which the artifact and ``install.sh`` were copied to ``/tmp`` (Packer's file
provisioner) and ``install.sh`` was run inside the image (its shell provisioner, here a chroot
with a clean environment), and ``/tmp`` emptied again.

Example::

    >>> dist = build_dist_into(tmp / "dist")
    >>> baked = bake_with_install_sh(build_rootfs("bookworm"), tmp / "bookworm", dist)
    >>> assert baked.first.returncode == 0, baked.first.stderr
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e.agent_install import (
    TargetPython,
    build_dist,
    clean_tmp,
    provision,
    run,
)
from tests.e2e.harness import Image, Rootfs, mount_overlay, unmount

PYZ = "/usr/lib/sealboot/sealboot-agent.pyz"
WRAPPER = "/usr/sbin/sealboot-agent"
CACHE_DIR = "/var/cache/sealboot-agent"
# The datasource (install.sh enables it where cloud-init 20.4+ is installed; Debian's path).
DS_CFG = "/etc/cloud/cloud.cfg.d/96-sealboot-datasource.cfg"
DS_PACKAGE = "/usr/lib/python3/dist-packages/sealboot_cloudinit"


@dataclass(frozen=True)
class Dist:
    """What ``make dist`` makes (built into a directory of the test run)."""

    dir: Path
    report: build_dist.Report
    build_id: str

    @property
    def pyz(self) -> Path:
        return self.dir / build_dist.PYZ_NAME

    @property
    def deb(self) -> Path:
        return next(self.dir.glob("*.deb"))

    @property
    def rpm(self) -> Path:
        return next(self.dir.glob("*.rpm"))

    @property
    def extraction(self) -> str:
        """Where the artifact's dependencies are unpacked on an instance."""
        return f"{CACHE_DIR}/{build_dist.PYZ_NAME}_{self.build_id}"


def build_dist_into(out: Path) -> Dist:
    report = build_dist.build(out, build_dist_cache())
    with zipfile.ZipFile(out / build_dist.PYZ_NAME) as z:
        build_id = json.loads(z.read("environment.json"))["build_id"]
    return Dist(out, report, build_id)


def build_dist_cache() -> Path:
    return build_dist.default_wheel_cache()


# --- measurements, for the run's summary ------------------------------------------------------


@dataclass
class Measurement:
    what: str
    value: str


MEASUREMENTS: list[Measurement] = []


def measured(what: str, value: str) -> None:
    MEASUREMENTS.append(Measurement(what, value))


# --- running things in an image ------------------------------------------------------------------


@contextlib.contextmanager
def mounted(lower: Sequence[Path], workdir: Path) -> Iterator[Path]:
    """A writable overlay over *lower* (topmost first); yields its root, unmounts at the end."""
    upper, work, target = workdir / "upper", workdir / "work", workdir / "root"
    mount_overlay(lower, upper, work, target)
    try:
        yield target
    finally:
        unmount(target)


@dataclass(frozen=True)
class FileState:
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int


def tree_state(top: Path) -> dict[str, FileState]:
    """Every entry under *top* (an overlay's upper directory): its mode, owner, size, mtime."""
    out: dict[str, FileState] = {}
    for path in sorted(top.rglob("*")):
        st = path.lstat()
        size = st.st_size if path.is_file() and not path.is_symlink() else 0
        mtime = st.st_mtime_ns if not path.is_dir() else 0  # directories change with any entry
        out["/" + str(path.relative_to(top))] = FileState(
            st.st_mode, st.st_uid, st.st_gid, size, mtime
        )
    return out


def disk_usage_kib(paths: Sequence[Path]) -> int:
    """``du -sk`` of *paths* together: what the install costs on the image's disk."""
    res = run(["du", "-skc", *map(str, paths)])
    if res.returncode != 0:
        raise RuntimeError(res.stderr)
    return int(res.stdout.splitlines()[-1].split()[0])


def target_python(rootfs: Rootfs) -> TargetPython:
    major, minor, micro = (int(x) for x in rootfs.python_version.split(".")[:3])
    return TargetPython((major, minor, micro))


@dataclass
class Baked:
    """An image baked with install.sh, and what installing it twice did."""

    image: Image
    first: subprocess.CompletedProcess[str]
    second: subprocess.CompletedProcess[str]
    after_first: dict[str, FileState]
    after_second: dict[str, FileState]
    seconds: float
    installed_kib: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def layer(self) -> Path:
        return self.image.layers[0]


def bake_with_install_sh(rootfs: Rootfs, workdir: Path, dist: Dist) -> Baked:
    """Provision *rootfs* with install.sh (twice: it must be idempotent) into a new layer."""
    start = time.monotonic()
    layer = workdir / "upper"
    with mounted([rootfs.path], workdir) as root:
        first = provision(root, dist.pyz)
        clean_tmp(root)
        after_first = tree_state(layer)
        second = provision(root, dist.pyz)
        clean_tmp(root)
        after_second = tree_state(layer)
        installed = disk_usage_kib(
            [root / PYZ.lstrip("/"), root / WRAPPER.lstrip("/"), root / CACHE_DIR.lstrip("/")]
        )
    seconds = time.monotonic() - start
    shutil.rmtree(workdir / "work")
    image = Image(rootfs, (layer,), target_python(rootfs))
    measured(
        f"install.sh into {rootfs.suite} (python3 {rootfs.python_version})",
        f"{installed} KiB installed, two runs in {seconds:.1f} s",
    )
    return Baked(image, first, second, after_first, after_second, seconds, installed)
