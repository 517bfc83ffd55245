"""``make dist``: the artifact is a shiv zipapp of pinned pure wheels, small and reproducible; the
build's own checks catch what they are there to catch."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import build_dist
import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from tests.image.bake import CACHE_DIR, Dist, build_dist_cache, measured


def site_names(pyz: Path) -> list[str]:
    with zipfile.ZipFile(pyz) as z:
        return [n.removeprefix("site-packages/") for n in z.namelist() if n.startswith("site-")]


def test_artifact_is_a_shiv_zipapp_that_unpacks_under_var_cache(dist: Dist) -> None:
    raw = dist.pyz.read_bytes()
    assert raw.startswith(b"#!/usr/bin/python3 -IS\n")
    with zipfile.ZipFile(dist.pyz) as z:
        env = json.loads(z.read("environment.json"))
        assert "__main__.py" in z.namelist()
    assert env["root"] == CACHE_DIR  # never $HOME/.shiv: HOME is unset or / at boot
    assert env["entry_point"] == "sealboot_agent.cli:entrypoint"
    assert env["reproducible"] is True
    assert env["build_id"] == dist.build_id
    assert dist.pyz.stat().st_mode & 0o777 == 0o755


def test_artifact_holds_exactly_the_pinned_pure_wheels_and_the_agent(dist: Dist) -> None:
    pins = build_dist.read_pins()
    names = site_names(dist.pyz)
    dist_infos = {n.split("/")[0].removesuffix(".dist-info") for n in names if ".dist-info/" in n}
    found = {}
    for info in dist_infos:
        name, _, version = info.rpartition("-")
        found[canonicalize_name(name)] = Version(version)
    assert found == {p.name: p.version for p in pins}
    # The agent imports botocore only.
    assert "boto3" not in found
    assert "s3transfer" not in found
    for wheel in dist.report.wheels:
        assert build_dist.PURE in parse_wheel_filename(wheel)[3], wheel
    assert not [n for n in names if n.endswith((".so", ".pyd", ".pyc", ".exe"))]
    assert any(n.startswith("sealboot_agent/cli.py") for n in names)
    assert not [n for n in names if n.startswith(("sealboot/", "bin/"))], "the toolkit stays out"


def test_botocore_models_are_only_the_services_the_agent_uses(dist: Dist) -> None:
    data = {n.split("/")[2] for n in site_names(dist.pyz) if n.startswith("botocore/data/")}
    assert data == {"secretsmanager", "ssm", *build_dist.BOTOCORE_DATA_FILES}
    assert dist.report.services == ["secretsmanager", "ssm"]
    assert dist.report.models_removed > 300


# Prints "service region fips endpoint" for every region botocore's table knows, with the
# artifact's own botocore (sys.argv[1] is its unpacked site-packages).
RESOLVE = """import json, sys
sys.path.insert(0, sys.argv[1])
import botocore.session
from botocore.config import Config
session = botocore.session.Session()
table = session.get_component("data_loader").load_data("endpoints")
for partition in table["partitions"]:
    for region in sorted(partition["regions"]):
        for service in ("secretsmanager", "ssm"):
            for fips in (False, True):
                client = session.create_client(
                    service, region_name=region, aws_access_key_id="a", aws_secret_access_key="b",
                    config=Config(use_fips_endpoint=fips))
                print(service, region, fips, client.meta.endpoint_url, client.meta.region_name)
"""


def test_endpoints_table_keeps_only_the_agents_services_and_resolves_the_same(
    dist: Dist, tmp_path: Path
) -> None:
    with zipfile.ZipFile(dist.pyz) as z:
        z.extractall(tmp_path / "pyz")
    site = tmp_path / "pyz" / "site-packages"
    trimmed = json.loads((site / "botocore/data/endpoints.json").read_text())
    (pin,) = [p for p in build_dist.read_pins() if p.name == "botocore"]
    with zipfile.ZipFile(build_dist.wheel_for(pin, build_dist_cache())) as wheel:
        original = json.loads(wheel.read("botocore/data/endpoints.json"))
    keep = set(dist.report.services)
    for partition in original["partitions"]:
        partition["services"] = {k: v for k, v in partition["services"].items() if k in keep}
    assert trimmed == original
    assert (site / "botocore/data/endpoints.json").stat().st_size < 64 * 1024

    # The same botocore with its full table (AWS_DATA_PATH comes before its own data).
    full = tmp_path / "full"
    full.mkdir()
    with zipfile.ZipFile(build_dist.wheel_for(pin, build_dist_cache())) as wheel:
        (full / "endpoints.json").write_bytes(wheel.read("botocore/data/endpoints.json"))
    resolved = {}
    for label, env in (("trimmed", {}), ("full", {"AWS_DATA_PATH": str(full)})):
        res = subprocess.run(
            ["/usr/bin/python3", "-S", "-c", RESOLVE, str(site)],
            env={"PATH": "/usr/bin:/bin", **env},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert res.returncode == 0, res.stderr
        resolved[label] = res.stdout.splitlines()
    assert len(resolved["trimmed"]) > 100
    assert resolved["trimmed"] == resolved["full"]
    gov_fips = "https://secretsmanager-fips.us-gov-west-1.amazonaws.com"
    assert f"secretsmanager us-gov-west-1 True {gov_fips} us-gov-west-1" in resolved["trimmed"]
    assert (
        "ssm cn-north-1 False https://ssm.cn-north-1.amazonaws.com.cn cn-north-1"
        in resolved["trimmed"]
    )


def test_artifact_is_small(dist: Dist) -> None:
    size = dist.pyz.stat().st_size
    extracted = dist.report.extracted_bytes
    measured("sealboot-agent.pyz", f"{size / 1024:.0f} KiB ({extracted / 1024:.0f} KiB unpacked)")
    measured(dist.deb.name, f"{dist.deb.stat().st_size / 1024:.0f} KiB")
    measured(dist.rpm.name, f"{dist.rpm.stat().st_size / 1024:.0f} KiB")
    # A footprint guard: the full botocore would make it about 15 MiB (20 MiB unpacked).
    assert size < 3 * 1024 * 1024
    assert extracted < 8 * 1024 * 1024


# --- reproducibility (issue #13) ---------------------------------------------------------------


def git(*args: str, cwd: Path = build_dist.REPO) -> str:
    res = subprocess.run(
        ["git", "-C", str(cwd), *args], capture_output=True, text=True, timeout=60, check=True
    )
    return res.stdout


def clone_with_this_working_tree(
    dest: Path, commit: str, files: dict[str, tuple[bytes, int]]
) -> None:
    """A git checkout of *commit* at *dest* whose tracked files hold *files* (this working tree's
    versions, so that the build under test is the one with the uncommitted edits)."""
    subprocess.run(
        ["git", "clone", "--quiet", "--no-checkout", "--shared", str(build_dist.REPO), str(dest)],
        capture_output=True,
        timeout=120,
        check=True,
    )
    git("update-ref", "--no-deref", "HEAD", commit, cwd=dest)
    for name, (data, mode) in files.items():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_bytes(data)
        (dest / name).chmod(mode)


def build_in(checkout: Path, *, umask: int, **env: str) -> Path:
    """``packaging/build_dist.py`` of *checkout*, run there as ``make dist`` would; its dist/."""
    base = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    res = subprocess.run(
        [
            sys.executable,
            str(checkout / "packaging" / "build_dist.py"),
            "--cache",
            str(build_dist_cache()),  # shared: the wheels are pinned by hash
        ],
        cwd=checkout,
        env={**base, **env},
        umask=umask,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    return checkout / "dist"


def zip_entries(pyz: Path) -> list[tuple[str, tuple[int, ...], str, int]]:
    with zipfile.ZipFile(pyz) as z:
        return [(i.filename, i.date_time, oct(i.external_attr >> 16), i.CRC) for i in z.infolist()]


def test_two_checkouts_of_one_commit_build_the_same_bytes(as_root: None, tmp_path: Path) -> None:
    """The same commit (with this working tree's edits) built in two checkouts, at paths of
    different lengths and at different times, gives byte-identical artifacts, SHA256SUMS and
    build.json, dated by the commit. The second checkout is as another machine may have it:
    owned by another user (CI building as root in a runner's checkout: git refuses to read it),
    files 0600, an untracked ``*.orig`` and byte code in the agent package, umask 077, another
    time zone, and a shiv installed under umask 077 (its bootstrap files 0600)."""
    commit = git("rev-parse", "HEAD").strip()
    epoch = int(git("log", "-1", "--format=%ct", commit))
    files = {
        name: (
            (build_dist.REPO / name).read_bytes(),
            (build_dist.REPO / name).stat().st_mode & 0o777,
        )
        for name in git("ls-files", "-z").split("\0")
        if name and (build_dist.REPO / name).is_file()  # not deleted in the working tree
    }
    here = tmp_path / "a"
    there = tmp_path / "a-checkout-with-a-much-longer-path" / "of" / "sealboot"
    clone_with_this_working_tree(here, commit, files)
    clone_with_this_working_tree(there, commit, files)

    agent = there / "agent" / "sealboot_agent"
    (agent / "cli.py.orig").write_text("# left behind by a merge\n")
    (agent / "__pycache__").mkdir(exist_ok=True)
    (agent / "__pycache__" / "cli.cpython-311.pyc").write_bytes(b"\0" * 16)
    for name in files:
        (there / name).chmod(0o600)
    subprocess.run(["chown", "-R", "65534:65534", str(there)], timeout=60, check=True)
    shiv = importlib.util.find_spec("shiv")
    assert shiv is not None
    assert shiv.origin is not None
    toolchain = tmp_path / "toolchain"
    shutil.copytree(
        Path(shiv.origin).parent,
        toolchain / "shiv",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    for path in toolchain.rglob("*"):
        path.chmod(0o700 if path.is_dir() else 0o600)

    first = build_in(here, umask=0o022, TZ="UTC")
    second = build_in(  # about two seconds later
        there,
        umask=0o077,
        TZ="Pacific/Kiritimati",
        PYTHONPATH=os.pathsep.join([str(toolchain), *filter(None, [os.environ.get("PYTHONPATH")])]),
    )

    assert sorted(p.name for p in second.iterdir()) == sorted(p.name for p in first.iterdir())
    assert zip_entries(second / build_dist.PYZ_NAME) == zip_entries(first / build_dist.PYZ_NAME)
    for path in sorted(first.iterdir()):
        assert (second / path.name).read_bytes() == path.read_bytes(), f"{path.name} differs"
    sums = (first / "SHA256SUMS").read_text().splitlines()
    assert [line.split()[1] for line in sums] == [
        build_dist.PYZ_NAME,
        f"sealboot-agent_{build_dist.agent_version()}-1_all.deb",
        f"sealboot-agent-{build_dist.agent_version()}-1.noarch.rpm",
    ]
    # Dated by the commit in both (not by the fallback for a tree outside git).
    assert json.loads((first / "build.json").read_text())["source_date_epoch"] == epoch
    dos_time = time.gmtime(epoch - epoch % 2)[:6]  # a zip entry's time has 2 s steps
    assert {i[1] for i in zip_entries(first / build_dist.PYZ_NAME)} == {dos_time}
    with zipfile.ZipFile(first / build_dist.PYZ_NAME) as z:
        assert "site-packages/sealboot_agent/cli.py" in z.namelist()
        assert not [n for n in z.namelist() if n.endswith((".orig", ".pyc"))]


def test_source_date_epoch_comes_from_the_checkouts_own_git(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    checkout = tmp_path / "checkout"
    git("init", "--quiet", str(checkout), cwd=tmp_path)
    monkeypatch.setenv("GIT_COMMITTER_DATE", "@1700000000 +0200")
    git(
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@t",
        "commit",
        "-q",
        "--allow-empty",
        "-m",
        "x",
        cwd=checkout,
    )
    assert build_dist.source_date_epoch(checkout) == 1700000000
    # An export (no .git of its own): the fixed time, even inside a checkout, whatever GIT_DIR.
    export = checkout / "build" / "export"
    export.mkdir(parents=True)
    assert build_dist.source_date_epoch(export) == build_dist.ZIP_EPOCH
    monkeypatch.setenv("GIT_DIR", str(checkout / ".git"))
    assert build_dist.source_date_epoch(export) == build_dist.ZIP_EPOCH
    assert build_dist.source_date_epoch(checkout) == 1700000000
    # A .git that git cannot read stops the build rather than giving another time.
    (export / ".git").mkdir()
    with pytest.raises(build_dist.BuildError, match="set SOURCE_DATE_EPOCH"):
        build_dist.source_date_epoch(export)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1600000000")
    assert build_dist.source_date_epoch(export) == 1600000000
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")  # a zip cannot hold times before 1980
    assert build_dist.source_date_epoch(export) == build_dist.ZIP_EPOCH
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(build_dist.BuildError, match="not a number"):
        build_dist.source_date_epoch(export)


# --- the build's own checks ---------------------------------------------------------------------


def write_agent(tmp_path: Path, **modules: str) -> Path:
    src = tmp_path / "sealboot_agent"
    src.mkdir()
    (src / "__init__.py").write_text('__version__ = "9.9.9"\n')
    for name, text in modules.items():
        (src / f"{name}.py").write_text(textwrap.dedent(text))
    return src


def test_services_are_followed_through_the_agents_own_wrapper(tmp_path: Path) -> None:
    src = write_agent(
        tmp_path,
        aws="""
            def make_client(session, service, *, region):
                return session.create_client(service, region_name=region)
        """,
        run="""
            from sealboot_agent.aws import make_client
            def go(session, ssm):
                return make_client(session, "ssm" if ssm else "secretsmanager", region="x")
        """,
        doctor="""
            def check(session):
                return session.create_client(service_name="sts")
        """,
    )

    assert build_dist.agent_services(src) == {"ssm", "secretsmanager", "sts"}


def test_a_stores_service_attribute_counts_every_store(tmp_path: Path) -> None:
    src = write_agent(
        tmp_path,
        stores="""
            class SecretsManagerStore:
                service = "secretsmanager"
            class SsmStore:
                service = "ssm"
        """,
        run="""
            def go(session, store):
                return session.create_client(store.service)
        """,
    )

    assert build_dist.agent_services(src) == {"ssm", "secretsmanager"}


def test_a_service_name_that_is_not_a_literal_stops_the_build(tmp_path: Path) -> None:
    src = write_agent(
        tmp_path,
        run="""
            SERVICE = "kms"
            def go(session):
                return session.create_client(SERVICE)
        """,
    )

    with pytest.raises(build_dist.BuildError, match=r"run\.py:4: create_client\(\) gets"):
        build_dist.agent_services(src)


def test_an_import_the_pins_do_not_provide_stops_the_build(tmp_path: Path) -> None:
    src = write_agent(tmp_path, aws="import json\nimport botocore.session\nimport boto3\n")
    site = tmp_path / "site"
    (site / "botocore").mkdir(parents=True)

    with pytest.raises(build_dist.BuildError, match=r"boto3 \(imported at aws\.py:3\)"):
        build_dist.check_imports(site, src)
    (site / "boto3").mkdir()
    build_dist.check_imports(site, src)


def meta(name: str, version: str, requires_python: str = "", *requires: str) -> build_dist.DistMeta:
    return build_dist.DistMeta(
        canonicalize_name(name),
        Version(version),
        SpecifierSet(requires_python),
        tuple(Requirement(r) for r in requires),
    )


def test_markers_are_evaluated_for_every_supported_python() -> None:
    # What pip on the host gets wrong: botocore's urllib3 bound only holds behind a marker.
    botocore = meta(
        "botocore",
        "1.42.97",
        ">=3.9",
        'urllib3<1.27,>=1.25.4; python_version < "3.10"',
        'urllib3!=2.2.0,<3,>=1.25.4; python_version >= "3.10"',
    )
    build_dist.check_consistent([botocore, meta("urllib3", "1.26.20")])

    with pytest.raises(build_dist.BuildError, match=r"on Python 3\.9 .*needs urllib3<1\.27"):
        build_dist.check_consistent([botocore, meta("urllib3", "2.6.3")])
    with pytest.raises(build_dist.BuildError, match=r"botocore 1\.43\.0 needs Python >=3\.10"):
        build_dist.check_consistent([meta("botocore", "1.43.0", ">=3.10")])


def test_only_pure_wheels_and_hashed_pins_are_accepted(tmp_path: Path) -> None:
    with pytest.raises(build_dist.BuildError, match="not a pure"):
        build_dist.check_pure([Path("charset_normalizer-3.5.3-cp311-cp311-manylinux_x86_64.whl")])
    build_dist.check_pure([Path("six-1.17.0-py2.py3-none-any.whl")])
    req = tmp_path / "req.txt"
    req.write_text("six==1.17.0\n")
    with pytest.raises(build_dist.BuildError, match="needs --hash"):
        build_dist.read_pins(req)
    req.write_text("six>=1.17.0 --hash=sha256:" + "0" * 64 + "\n")
    with pytest.raises(build_dist.BuildError, match="is not name==version"):
        build_dist.read_pins(req)


def test_pinned_agent_dependencies_fit_the_project_metadata() -> None:
    """The artifact's botocore is one that pyproject allows on Python 3.9 (boto3 < 1.43)."""
    botocore = next(p for p in build_dist.read_pins() if p.name == "botocore")
    assert botocore.version < Version("1.43")
    assert build_dist.PYTHONS[0] == "3.9"
