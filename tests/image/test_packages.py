"""The .deb (dpkg -i into Debian 12) and the .rpm (read with the real rpm tool, installed with
``rpm --root`` into a scratch Debian 13): same files as install.sh, same checks, clean removal."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import testinfra

from tests.e2e.agent_install import chroot_argv, run
from tests.e2e.harness import Image, InstanceNetwork
from tests.image.bake import (
    CACHE_DIR,
    DS_CFG,
    DS_PACKAGE,
    PYZ,
    WRAPPER,
    Dist,
    FileState,
    measured,
    mounted,
    target_python,
    tree_state,
)
from tests.image.checks import check_installed, fetch_with_installed_agent
from tests.image.chroot import CHROOT
from tests.image.conftest import BakedImages, Rootfses

DOCS = "/usr/share/doc/sealboot-agent"
RPM_DB = "/var/lib/rpm"


def agent_files(state: dict[str, FileState]) -> dict[str, tuple[int, int, int, int]]:
    """The files install.sh and the packages both install, with mode, owner and size."""
    return {
        p: (s.mode, s.uid, s.gid, s.size)
        for p, s in state.items()
        if p in (PYZ, WRAPPER) or p.startswith(CACHE_DIR + "/")
    }


@dataclass
class PackagedImage:
    image: Image
    output: str
    after: dict[str, FileState]


@pytest.fixture(scope="module")
def deb_image(
    rootfs: Rootfses, dist: Dist, tmp_path_factory: pytest.TempPathFactory
) -> PackagedImage:
    """Debian 12 with the .deb installed by dpkg (its postinst runs install.sh --prepare)."""
    workdir = tmp_path_factory.mktemp("deb")
    base = rootfs("bookworm")
    start = time.monotonic()
    with mounted([base.path], workdir) as root:
        shutil.copy2(dist.deb, root / "tmp" / dist.deb.name)
        res = run(chroot_argv(root, ["dpkg", "-i", f"/tmp/{dist.deb.name}"]))
        (root / "tmp" / dist.deb.name).unlink()
        assert res.returncode == 0, res.stdout + res.stderr
    measured("dpkg -i into bookworm", f"{time.monotonic() - start:.1f} s")
    shutil.rmtree(workdir / "work")
    image = Image(base, (workdir / "upper",), target_python(base))
    return PackagedImage(image, res.stdout + res.stderr, tree_state(workdir / "upper"))


def test_deb_metadata_and_contents(dist: Dist) -> None:
    fields = run(["dpkg-deb", "-f", str(dist.deb), "Package", "Version", "Architecture", "Depends"])
    contents = run(["dpkg-deb", "-c", str(dist.deb)])

    assert fields.returncode == 0, fields.stderr
    assert fields.stdout.splitlines() == [
        "Package: sealboot-agent",
        f"Version: {dist.report.version}-1",
        "Architecture: all",
        "Depends: python3 (>= 3.9)",
    ]
    files = {
        line.split()[-1].removeprefix("."): line.split()[0]
        for line in contents.stdout.splitlines()
        if not line.startswith("d")
    }
    assert files == {
        PYZ: "-rwxr-xr-x",
        WRAPPER: "-rwxr-xr-x",
        "/usr/lib/sealboot/install.sh": "-rwxr-xr-x",
        f"{DOCS}/README.md": "-rw-r--r--",
        f"{DOCS}/PACKAGING.md": "-rw-r--r--",
        f"{DOCS}/copyright": "-rw-r--r--",
    }
    assert "drwxr-xr-x root/root         0" in contents.stdout
    assert all(" root/root " in line for line in contents.stdout.splitlines())


def test_deb_installs_what_install_sh_installs(
    deb_image: PackagedImage, baked: BakedImages, dist: Dist, tmp_path: Path
) -> None:
    assert "Setting up sealboot-agent" in deb_image.output
    assert "AWS services [secretsmanager ssm]" in deb_image.output  # postinst: --prepare
    assert agent_files(deb_image.after) == agent_files(baked("bookworm").after_first)
    with mounted(deb_image.image.lowerdirs(), tmp_path / "check") as root:
        host = testinfra.get_host(str(root), connection=CHROOT)

        check_installed(host, dist, deb_image.image.rootfs.python_version)
        package = host.package("sealboot-agent")
        assert package.is_installed
        assert package.version == f"{dist.report.version}-1"
        assert host.file(f"{DOCS}/copyright").contains("Apache License")
        assert host.file(f"{DOCS}/README.md").contains("sealboot-agent")
        # The postinst enabled the datasource, as install.sh does.
        assert host.file(DS_CFG).contains("datasource_list: \\[Sealboot, None\\]")
        assert host.file(f"{DS_PACKAGE}/DataSourceSealboot.py").is_file


def test_fetch_from_the_deb_installed_artifact(
    deb_image: PackagedImage, aws: InstanceNetwork, tmp_path: Path
) -> None:
    rss_kib = fetch_with_installed_agent(deb_image.image, aws, tmp_path, "bookworm, from the .deb")

    assert rss_kib < 120 * 1024


def test_deb_removal_leaves_nothing_behind(deb_image: PackagedImage, tmp_path: Path) -> None:
    with mounted(deb_image.image.lowerdirs(), tmp_path / "rm") as root:
        removed = run(chroot_argv(root, ["dpkg", "--purge", "sealboot-agent"]))

        assert removed.returncode == 0, removed.stdout + removed.stderr
        # The datasource goes too: a drop-in naming a missing module would break cloud-init.
        for path in ("/usr/lib/sealboot", WRAPPER, CACHE_DIR, DOCS, DS_CFG, DS_PACKAGE):
            assert not (root / path.lstrip("/")).exists(), path


# --- the .rpm -------------------------------------------------------------------------------------


def rpm_query(dist: Dist, *args: str) -> str:
    res = run(["rpm", "-qp", *args, str(dist.rpm)])
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_rpm_file_list_and_metadata_with_the_rpm_tool(dist: Dist, system_tools: None) -> None:
    info = rpm_query(dist, "-i")
    files = rpm_query(
        dist, "--qf", "[%{FILEMODES:perms} %{FILEUSERNAME} %{FILEGROUPNAME} %{FILENAMES}\n]"
    )
    requires = rpm_query(dist, "-R").splitlines()
    scripts = rpm_query(dist, "--scripts")
    checked = run(["rpm", "-K", "--nosignature", str(dist.rpm)])

    for line in (
        "Name        : sealboot-agent",
        f"Version     : {dist.report.version}",
        "Release     : 1",
        "Architecture: noarch",
        "License     : Apache-2.0",
        "Summary     : Fetches sealed EC2 user data at first boot",
    ):
        assert line in info.splitlines(), (line, info)
    assert files.splitlines() == [
        "drwxr-xr-x root root /usr/lib/sealboot",
        "-rwxr-xr-x root root /usr/lib/sealboot/install.sh",
        f"-rwxr-xr-x root root {PYZ}",
        f"-rwxr-xr-x root root {WRAPPER}",
        f"drwxr-xr-x root root {DOCS}",
        f"-rw-r--r-- root root {DOCS}/PACKAGING.md",
        f"-rw-r--r-- root root {DOCS}/README.md",
        "drwxr-xr-x root root /usr/share/licenses/sealboot-agent",
        "-rw-r--r-- root root /usr/share/licenses/sealboot-agent/LICENSE",
        f"drwxr-xr-x root root {CACHE_DIR}",
    ]
    assert rpm_query(dist, "-d").split() == [f"{DOCS}/PACKAGING.md", f"{DOCS}/README.md"]
    assert rpm_query(dist, "-L").split() == ["/usr/share/licenses/sealboot-agent/LICENSE"]
    assert "python3 >= 3.9" in requires
    assert "postinstall scriptlet (using /bin/sh):" in scripts
    assert "exec /usr/lib/sealboot/install.sh --prepare" in scripts
    assert "preuninstall scriptlet (using /bin/sh):" in scripts
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip().endswith("digests OK")


@pytest.fixture(scope="module")
def rpm_root(
    rootfs: Rootfses, dist: Dist, system_tools: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, str]]:
    """Debian 13 with the .rpm installed by ``rpm --root`` (its %post runs in the image)."""
    workdir = tmp_path_factory.mktemp("rpm")
    with mounted([rootfs("trixie").path], workdir) as root:
        # Debian's python3 is no rpm package: the dependency cannot be met from rpm's database.
        res = run(["rpm", "--root", str(root), "--dbpath", RPM_DB, "-i", "--nodeps", str(dist.rpm)])
        assert res.returncode == 0, res.stdout + res.stderr
        yield root, res.stdout + res.stderr


def test_rpm_installs_what_install_sh_installs(
    rpm_root: tuple[Path, str], baked: BakedImages, dist: Dist, tmp_path: Path
) -> None:
    root, output = rpm_root
    host = testinfra.get_host(str(root), connection=CHROOT)
    upper = root.parent / "upper"

    assert "AWS services [secretsmanager ssm]" in output  # %post: install.sh --prepare
    assert agent_files(tree_state(upper)) == agent_files(baked("trixie").after_first)
    check_installed(host, dist, baked("trixie").image.rootfs.python_version)
    verify = run(
        ["rpm", "--root", str(root), "--dbpath", RPM_DB, "-V", "--nodeps", "sealboot-agent"]
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_rpm_erase_leaves_nothing_behind(rpm_root: tuple[Path, str], tmp_path: Path) -> None:
    installed, _ = rpm_root
    with mounted([installed], tmp_path / "erase") as root:  # an overlay on the installed image
        erased = run(["rpm", "--root", str(root), "--dbpath", RPM_DB, "-e", "sealboot-agent"])
        listed = run(["rpm", "--root", str(root), "--dbpath", RPM_DB, "-qa"])

        assert erased.returncode == 0, erased.stdout + erased.stderr
        gone = ("/usr/lib/sealboot", WRAPPER, CACHE_DIR, DOCS, "/usr/share/licenses/sealboot-agent")
        for path in gone:
            assert not (root / path.lstrip("/")).exists(), path
        assert listed.stdout == ""
