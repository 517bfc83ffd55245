"""packaging/install.sh, run into each Debian rootfs the way Packer runs it, then checked with
testinfra, a fetch from the installed artifact and a real cloud-init boot."""

from __future__ import annotations

import secrets
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import build_dist
import pytest
import testinfra

from tests.e2e.agent_install import INSTALL_SH, chroot_argv, clean_tmp, provision, run
from tests.e2e.harness import Instance, InstanceNetwork, e2e_suites
from tests.e2e.test_harness import (
    SECRET_MARKER,
    agent_lines,
    assert_clean_boot,
    assert_no_secret,
    sealed_payload,
)
from tests.image.bake import (
    CACHE_DIR,
    DS_CFG,
    DS_PACKAGE,
    PYZ,
    WRAPPER,
    Dist,
    FileState,
    mounted,
    tree_state,
)
from tests.image.checks import (
    check_installed,
    fetch_with_installed_agent,
    foreign_modules,
)
from tests.image.chroot import CHROOT
from tests.image.conftest import BakedImages, Rootfses

SUITES = e2e_suites()
OLDEST = SUITES[0]


def without_times(state: dict[str, FileState]) -> dict[str, tuple[int, int, int, int]]:
    return {p: (s.mode, s.uid, s.gid, s.size) for p, s in state.items() if not p.startswith("/tmp")}


@pytest.mark.parametrize("suite", SUITES)
def test_install_sh_installs_once_and_a_second_run_changes_nothing(
    suite: str, baked: BakedImages
) -> None:
    b = baked(suite)
    python = b.image.rootfs.python_version

    assert b.first.returncode == 0, b.first.stderr
    assert f"{PYZ}: installed" in b.first.stderr
    assert f"{WRAPPER}: installed" in b.first.stderr
    assert f"on CPython {python} (/usr/bin/python3) in /:" in b.first.stderr
    assert "AWS services [secretsmanager ssm]" in b.first.stderr
    assert b.second.returncode == 0, b.second.stderr
    assert f"{PYZ}: unchanged" in b.second.stderr
    assert f"{WRAPPER}: unchanged" in b.second.stderr
    assert b.after_second == b.after_first, "a second run must leave every file as it was"
    # It writes the agent's files and nothing else: no $HOME/.shiv, no /etc, no state.
    written = [p for p, s in b.after_first.items() if not stat.S_ISDIR(s.mode)]
    assert written
    ours = (PYZ, WRAPPER, CACHE_DIR + "/", DS_CFG, DS_PACKAGE + "/")
    assert [p for p in written if not p.startswith(ours)] == []
    assert DS_CFG in written, "cloud-init is installed, so the datasource is enabled"


@pytest.mark.parametrize("suite", SUITES)
def test_installed_agent_checked_with_testinfra(
    suite: str, baked: BakedImages, dist: Dist, tmp_path: Path
) -> None:
    b = baked(suite)
    with mounted(b.image.lowerdirs(), tmp_path / "check") as root:
        host = testinfra.get_host(str(root), connection=CHROOT)

        check_installed(host, dist, b.image.rootfs.python_version)
        # The datasource: its drop-in and its package next to cloud-init's, importable by
        # cloud-init's own python3; nothing else under /etc.
        etc = [p for p, st in b.after_first.items() if p.startswith("/etc")]
        assert [p for p in etc if not stat.S_ISDIR(b.after_first[p].mode)] == [DS_CFG]
        cfg = host.file(DS_CFG)
        assert (cfg.user, cfg.group, cfg.mode) == ("root", "root", 0o644)
        assert "datasource_list: [Sealboot, None]" in cfg.content_string
        assert "datasource_pkg_list: [sealboot_cloudinit]" in cfg.content_string
        module = host.file(f"{DS_PACKAGE}/DataSourceSealboot.py")
        assert (module.user, module.mode) == ("root", 0o644)
        imported = host.check_output(
            "python3 -c 'from sealboot_cloudinit import DataSourceSealboot as d; "
            "print(d.DataSourceSealboot.dsname)'"
        )
        assert imported.strip() == "Ec2"


@pytest.mark.parametrize(
    ("suite", "ssm"),
    [(s, False) for s in SUITES] + [(OLDEST, True)],
    ids=[*SUITES, f"{OLDEST}-ssm"],
)
def test_fetch_from_the_installed_artifact(
    suite: str, ssm: bool, baked: BakedImages, aws: InstanceNetwork, tmp_path: Path
) -> None:
    b = baked(suite)
    label = f"{suite}, python3 {b.image.rootfs.python_version}" + (", SSM" if ssm else "")

    rss_kib = fetch_with_installed_agent(b.image, aws, tmp_path, label, ssm=ssm)

    assert rss_kib < 120 * 1024, f"peak RSS {rss_kib} KiB"


@pytest.mark.parametrize("suite", SUITES)
def test_boot_through_cloud_init_with_the_installed_artifact(
    suite: str, baked: BakedImages, aws: InstanceNetwork, tmp_path: Path
) -> None:
    token = secrets.token_hex(16)
    sealed = aws.seal(sealed_payload(token), tmp_path / "seal")
    with Instance(baked(suite).image, tmp_path / "instance", aws) as inst:
        # install.sh enabled the datasource: the user data comes from IMDS, as on EC2.
        inst.prepare_for_ec2_datasource()
        aws.stack.identity.user_data = sealed.userdata

        result = inst.boot()

        assert_clean_boot(result)
        secret = f"{SECRET_MARKER.decode()}-{token}"
        assert inst.read_text("/etc/e2e/secret") == f"join-token {secret}\n"
        assert inst.read_text("/var/lib/e2e/script") == f"script {secret}\n"
        assert aws.secret_names() == []
        lines = agent_lines(result.output_log)
        assert sum("fetched 1 fragment(s)" in line for line in lines) == 1, lines
        assert any("hand-off stdout" in line for line in lines), "the datasource unsealed it"
        for path in inst.files_under("/var/log"):
            assert_no_secret(path.read_bytes(), token, str(path))
        # The boot ran the pre-extracted artifact: nothing new under its cache.
        assert not [p for p in (tmp_path / "instance" / "upper").rglob("*") if CACHE_DIR in str(p)]


def test_no_datasource_option_leaves_cloud_init_alone(
    rootfs: Rootfses, dist: Dist, tmp_path: Path
) -> None:
    with mounted([rootfs("bookworm").path], tmp_path / "plain") as root:
        shutil.copy(dist.pyz, root / "tmp/sealboot-agent.pyz")
        shutil.copy(INSTALL_SH, root / "tmp/install.sh")
        res = subprocess.run(
            ["chroot", str(root), "/bin/sh", "/tmp/install.sh", "--no-datasource"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert res.returncode == 0, res.stderr
        assert "datasource: not enabled (--no-datasource)" in res.stderr
        assert not (root / DS_CFG.lstrip("/")).exists()


def test_agent_ignores_the_python_packages_of_the_image(
    rootfs: Rootfses, dist: Dist, tmp_path: Path
) -> None:
    """Debian's awscli brings awscrt and cryptography into site-packages; botocore and urllib3
    would load them if the agent's interpreter could see them."""
    with mounted([rootfs("bookworm+awscli").path], tmp_path / "img") as root:
        shutil.copy(dist.pyz, root / "tmp/sealboot-agent.pyz")
        shutil.copy(INSTALL_SH, root / "tmp/install.sh")
        res = subprocess.run(
            ["chroot", str(root), "/bin/sh", "/tmp/install.sh"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert res.returncode == 0, res.stderr
        host = testinfra.get_host(str(root), connection=CHROOT)
        # The image's own python3 has them: the check below could fail.
        assert host.run("python3 -I -c 'import awscrt, cryptography'").rc == 0

        assert foreign_modules(host) == []


# --- what install.sh refuses, and its options ---------------------------------------------------


def stub_python(root: Path, prints: str) -> None:
    """Replace the image's python3 by a stub that reports another interpreter. (No Debian rootfs
    the mirror serves has a Python older than 3.9; the version check is what is under test.)"""
    py = root / "usr/bin/python3"
    py.unlink()
    py.write_text(f"#!/bin/sh\necho 'sealboot-python: {prints}'\n")
    py.chmod(0o755)


@pytest.mark.parametrize(
    ("python", "message"),
    [
        (None, "there is no /usr/bin/python3 in /: sealboot-agent needs CPython 3.9 or newer"),
        ("CPython 3.8.18 308", "is Python 3.8.18; sealboot-agent needs 3.9 or newer"),
        ("PyPy 3.10.14 310", "is PyPy 3.10.14; sealboot-agent needs CPython"),
    ],
    ids=["missing", "python-3.8", "pypy"],
)
def test_install_sh_refuses_an_unsupported_python3(
    python: str | None, message: str, rootfs: Rootfses, dist: Dist, tmp_path: Path
) -> None:
    with mounted([rootfs("bookworm").path], tmp_path / "img") as root:
        if python is None:
            (root / "usr/bin/python3").unlink()
        else:
            stub_python(root, python)

        res = provision(root, dist.pyz)

        assert res.returncode == 3, res.stderr
        assert message in res.stderr
        assert not (root / "usr/lib/sealboot").exists()
        assert not (root / WRAPPER.lstrip("/")).exists()


def test_install_sh_refuses_a_file_that_is_not_the_artifact(
    rootfs: Rootfses, dist: Dist, tmp_path: Path
) -> None:
    with mounted([rootfs("bookworm").path], tmp_path / "img") as root:
        (root / "tmp/not.pyz").write_bytes(b"#!/bin/sh\necho hi\n")
        shutil.copy2(INSTALL_SH, root / "tmp/install.sh")

        res = run(chroot_argv(root, ["/bin/sh", "/tmp/install.sh", "/tmp/not.pyz"]))
        usage = run(chroot_argv(root, ["/bin/sh", "/tmp/install.sh", "--python", "python3"]))
        unknown = run(chroot_argv(root, ["/bin/sh", "/tmp/install.sh", "--frobnicate"]))

        assert res.returncode == 1, res.stderr
        assert "/tmp/not.pyz is not a sealboot-agent.pyz built by 'make dist'" in res.stderr
        assert not (root / PYZ.lstrip("/")).exists()
        assert list((root / "usr/lib/sealboot").iterdir()) == [], "no half-installed file"
        assert usage.returncode == 2
        assert "--python must be an absolute path" in usage.stderr
        assert unknown.returncode == 2
        assert "unknown option --frobnicate" in unknown.stderr


def test_root_option_installs_the_same_tree_from_outside_the_image(
    baked: BakedImages, rootfs: Rootfses, dist: Dist, tmp_path: Path
) -> None:
    """``install.sh --root DIR`` (a mounted image): the image's own python3 runs the checks."""
    reference = baked(OLDEST)
    with mounted([rootfs(OLDEST).path], tmp_path / "img") as root:
        res = run([str(INSTALL_SH), "--root", str(root), str(dist.pyz)])
        assert res.returncode == 0, res.stderr
        assert f"on CPython {reference.image.rootfs.python_version} (/usr/bin/python3)" in (
            res.stderr
        )
        assert f" in {root}:" in res.stderr
    assert without_times(tree_state(tmp_path / "img" / "upper")) == without_times(
        reference.after_first
    )


def test_python_option_picks_the_interpreter(rootfs: Rootfses, dist: Dist, tmp_path: Path) -> None:
    with mounted([rootfs("bookworm").path], tmp_path / "img") as root:
        res = provision(
            root, dist.pyz, "--python", "/usr/bin/python3.11", "/tmp/sealboot-agent.pyz"
        )
        clean_tmp(root)
        host = testinfra.get_host(str(root), connection=CHROOT)

        assert res.returncode == 0, res.stderr
        assert "(/usr/bin/python3.11)" in res.stderr
        assert host.file(WRAPPER).content_string == build_dist.wrapper_text("/usr/bin/python3.11")
        assert (
            host.check_output("sealboot-agent --version") == f"sealboot-agent {dist.report.version}"
        )


def test_prepare_drops_other_builds_and_a_wiped_cache_is_extracted_again(
    baked: BakedImages, dist: Dist, tmp_path: Path
) -> None:
    image = baked("bookworm").image
    with mounted(image.lowerdirs(), tmp_path / "img") as root:
        cache = root / CACHE_DIR.lstrip("/")
        stale = cache / "sealboot-agent.pyz_0123abcd"
        (stale / "site-packages").mkdir(parents=True)
        (cache / ".sealboot-agent.pyz_0123abcd_lock").touch()
        shutil.copy2(INSTALL_SH, root / "tmp/install.sh")

        prepared = run(chroot_argv(root, ["/bin/sh", "/tmp/install.sh", "--prepare"]))

        assert prepared.returncode == 0, prepared.stderr
        assert "removing /var/cache/sealboot-agent/sealboot-agent.pyz_0123abcd " in (
            prepared.stderr
        )
        assert sorted(p.name for p in cache.iterdir()) == sorted(
            [Path(dist.extraction).name, f".{Path(dist.extraction).name}_lock"]
        )

        # If something wipes /var/cache in the image, the agent unpacks itself on its next run.
        shutil.rmtree(cache)
        again = run(chroot_argv(root, [WRAPPER, "--version"]))
        assert again.returncode == 0, again.stderr
        assert (root / dist.extraction.lstrip("/") / "site-packages/botocore").is_dir()


def test_install_sh_is_shellcheck_clean() -> None:
    scripts = [INSTALL_SH, *sorted((INSTALL_SH.parent / "scripts").glob("*.sh"))]
    res = subprocess.run(
        [str(Path(sys.executable).parent / "shellcheck"), "--severity=style", *map(str, scripts)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stdout
