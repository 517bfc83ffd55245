"""``make dist``: the artifact is a shiv zipapp of pinned pure wheels, small and reproducible; the
build's own checks catch what they are there to catch."""

from __future__ import annotations

import json
import textwrap
import zipfile
from pathlib import Path

import build_dist
import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from tests.image.bake import CACHE_DIR, Dist, build_dist_into, measured


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


def test_artifact_is_small(dist: Dist) -> None:
    size = dist.pyz.stat().st_size
    extracted = dist.report.extracted_bytes
    measured("sealboot-agent.pyz", f"{size / 1024:.0f} KiB ({extracted / 1024:.0f} KiB unpacked)")
    measured(dist.deb.name, f"{dist.deb.stat().st_size / 1024:.0f} KiB")
    measured(dist.rpm.name, f"{dist.rpm.stat().st_size / 1024:.0f} KiB")
    # A footprint guard: the full botocore would make it about 15 MiB (20 MiB unpacked).
    assert size < 3 * 1024 * 1024
    assert extracted < 8 * 1024 * 1024


def test_build_is_reproducible(dist: Dist, tmp_path: Path) -> None:
    again = build_dist_into(tmp_path / "again")

    assert (again.dir / "SHA256SUMS").read_text() == (dist.dir / "SHA256SUMS").read_text()
    assert len((dist.dir / "SHA256SUMS").read_text().splitlines()) == 3


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
