"""The sealboot datasource on cloud-init's own classes (four upstream releases), one behaviour each.

cloud-init is not a dependency of the toolkit or of the virtualenv: its source comes from the
verified upstream archive (``scripts/e2e/cloud_init_sources.py``, ``../shared/cloud-init`` or
the cache), and every module it needs imports from the virtualenv except ``configobj``, which only
its network-config parsers use; a placeholder stands in for that one. Real: ``DataSource``,
``DataSourceEc2._get_data`` and ``get_data``, ``Paths``, the Debian ``Distro``, ``pkl_store`` /
``pkl_load``, ``update_metadata_if_supported``, ``list_sources`` and ``UserDataProcessor``.
Replaced: the EC2 crawl (``crawl_metadata``, the network) and sealboot-agent (a shell script).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import subprocess
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sealboot.render import render_userdata
from sealboot_agent.wire import DEFAULT_ROOT, Manifest

REPO = Path(__file__).parents[2]
# The upstream releases recorded in scripts/e2e/cloud-init (AL2023, RHEL 9, Ubuntu 24.04).
RELEASES = ["22.2.2", "23.4.4", "24.1.7", "24.4.1"]
IID = "i-0123456789abcdef0"
PAYLOAD = b"#cloud-config\nruncmd: [[echo, unsealed]]\n"
# What a stock CAPA controller writes, sealed for the cloud-init hand-off.
SEALED = Manifest.capa(
    f"{DEFAULT_ROOT}/0b8f5c8e-1f7a-4f0e-9d0c-3c1f6c2b7a11", 1, region="eu-west-1"
)


def _cloud_init_tree(release: str) -> Path:
    res = subprocess.run(
        [sys.executable, str(REPO / "scripts/e2e/cloud_init_sources.py"), "--offline", "--json"]
        + [release],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    found = json.loads(res.stdout)["sources"]
    assert release in found, res.stdout + res.stderr
    return Path(found[release])


@pytest.fixture(scope="module", params=RELEASES)
def ci(request: pytest.FixtureRequest) -> Iterator[types.SimpleNamespace]:
    """cloud-init's modules and the datasource module, imported on one upstream release's tree."""
    before = set(sys.modules)
    tree = str(_cloud_init_tree(request.param))
    sys.path.insert(0, tree)
    try:
        importlib.import_module("configobj")
    except ImportError:
        placeholder = types.ModuleType("configobj")
        placeholder.ConfigObj = type("ConfigObj", (), {})  # type: ignore[attr-defined]
        sys.modules["configobj"] = placeholder
    sys.modules.pop("sealboot_cloudinit.DataSourceSealboot", None)
    try:
        ns = types.SimpleNamespace(
            helpers=importlib.import_module("cloudinit.helpers"),
            distros=importlib.import_module("cloudinit.distros"),
            sources=importlib.import_module("cloudinit.sources"),
            ec2=importlib.import_module("cloudinit.sources.DataSourceEc2"),
            stages=importlib.import_module("cloudinit.stages"),
            ds=importlib.import_module("sealboot_cloudinit.DataSourceSealboot"),
        )
        # obj.pkl is written by sources.pkl_store from 23.1 on, by stages._pkl_store before.
        ns.pkl_store = getattr(ns.sources, "pkl_store", None) or ns.stages._pkl_store
        ns.pkl_load = getattr(ns.sources, "pkl_load", None) or ns.stages._pkl_load
        assert ns.sources.__file__.startswith(tree)
        yield ns
    finally:
        sys.path.remove(tree)
        for name in set(sys.modules) - before:
            del sys.modules[name]


@dataclass
class Boot:
    """One instance's cloud-init state directory, its IMDS answer and its sealboot-agent."""

    ci: types.SimpleNamespace
    root: Path
    user_data: bytes = b""

    @property
    def calls(self) -> list[str]:
        log = self.root / "agent.calls"
        return log.read_text().splitlines() if log.exists() else []

    def agent(self, exit_code: int = 0) -> None:
        """A stand-in agent: records its arguments, prints PAYLOAD or fails with *exit_code*."""
        script = self.root / "sealboot-agent"
        (self.root / "payload").write_bytes(PAYLOAD)
        script.write_text(
            "#!/bin/sh\n"
            f'echo "$*" >>{self.root}/agent.calls\n'
            + (f"cat {self.root}/payload\n" if exit_code == 0 else f"exit {exit_code}\n")
        )
        script.chmod(0o755)

    def datasource(self) -> Any:
        paths = self.ci.helpers.Paths(
            {"cloud_dir": str(self.root / "cloud"), "run_dir": str(self.root / "run")}
        )
        distro = self.ci.distros.fetch("debian")("debian", {}, paths)
        return self.ci.ds.DataSourceSealboot({}, distro, paths)

    def crawl(self) -> dict[str, Any]:
        """What DataSourceEc2.crawl_metadata returns on EC2, with this boot's user data."""
        doc = {"instanceId": IID, "region": "eu-west-1", "availabilityZone": "eu-west-1a"}
        return {
            "meta-data": {"instance-id": IID, "local-hostname": "ip-10-0-0-1"},
            "user-data": self.user_data,
            "dynamic": {"instance-identity": {"document": doc}},
        }


@pytest.fixture
def boot(ci: types.SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Boot:
    b = Boot(ci, tmp_path)
    b.agent()
    monkeypatch.setattr(ci.ds, "AGENT", str(tmp_path / "sealboot-agent"))
    # The network is the one thing replaced in DataSourceEc2: its crawl of IMDS.
    monkeypatch.setattr(ci.ec2.DataSourceEc2, "crawl_metadata", lambda self: b.crawl())
    return b


def test_sealed_user_data_reaches_cloud_init_unsealed(boot: Boot) -> None:
    boot.user_data = render_userdata(SEALED)
    ds = boot.datasource()

    assert ds.get_data() is True

    assert ds.get_userdata_raw() == PAYLOAD
    assert boot.calls == [
        f"fetch --handoff stdout --manifest={SEALED.to_json()} --instance-id {IID}"
    ]
    # cloud-init's own UserDataProcessor reads the unsealed user data.
    parts = [p for p in ds.get_userdata().walk() if not p.is_multipart()]
    assert [p.get_content_type() for p in parts] == ["text/cloud-config"]
    assert parts[0].get_payload(decode=True) == PAYLOAD
    assert ds.dsname == "Ec2"


@pytest.mark.parametrize(
    "user_data",
    [
        b"#cloud-config\nruncmd: [[echo, plain]]\n",
        b"",
        b"\x1f\x8b\x08\x00corrupt gzip",
        b"Content-Type: multipart/mixed; boundary=x\nMIME-Version: 1.0\n\n--x\n",
        b"#cloud-boothook\nSEALBOOT_MANIFEST='unterminated\n",
    ],
)
def test_other_user_data_is_left_as_ec2_made_it(boot: Boot, user_data: bytes) -> None:
    boot.user_data = user_data
    ds = boot.datasource()

    assert ds.get_data() is True

    assert ds.get_userdata_raw() == user_data
    assert boot.calls == []
    assert ds._sealboot_unsealed is None


def test_capa_hand_off_user_data_is_left_to_the_boothook(boot: Boot) -> None:
    boot.user_data = render_userdata(SEALED, "capa")
    ds = boot.datasource()

    assert ds.get_data() is True

    assert ds.get_userdata_raw() == boot.user_data
    assert boot.calls == []


def test_a_failing_agent_leaves_the_sealed_user_data_to_the_boothook(boot: Boot) -> None:
    boot.agent(exit_code=5)
    boot.user_data = render_userdata(SEALED)
    ds = boot.datasource()

    assert ds.get_data() is True

    assert ds.get_userdata_raw() == boot.user_data
    assert len(boot.calls) == 1
    assert ds._sealboot_unsealed == (hashlib.sha256(boot.user_data).hexdigest(), None)


def test_a_refresh_from_obj_pkl_restores_without_running_the_agent(boot: Boot) -> None:
    boot.user_data = render_userdata(SEALED)
    ds = boot.datasource()
    assert ds.get_data() is True
    pkl = boot.root / "obj.pkl"
    assert boot.ci.pkl_store(ds, str(pkl))

    restored = boot.ci.pkl_load(str(pkl))
    # What a hotplug or a boot event does to the restored datasource: EC2 is crawled again.
    refreshed = restored.update_metadata_if_supported([boot.ci.sources.EventType.BOOT])

    assert refreshed is True
    assert restored.get_userdata_raw() == PAYLOAD
    assert len(boot.calls) == 1  # the fragments are gone: never run the agent twice


def test_an_obj_pkl_of_an_older_sealboot_is_taken_over(boot: Boot) -> None:
    boot.user_data = render_userdata(SEALED)
    ds = boot.datasource()
    assert ds.get_data() is True
    del ds.__dict__["_sealboot_unsealed"]  # what an older sealboot pickled
    pkl = boot.root / "obj.pkl"
    assert boot.ci.pkl_store(ds, str(pkl))

    restored = boot.ci.pkl_load(str(pkl))

    digest = hashlib.sha256(boot.user_data).hexdigest()
    assert restored.__dict__["_sealboot_unsealed"] == (digest, PAYLOAD)


def test_cloud_init_finds_the_datasource_by_its_package(ci: types.SimpleNamespace) -> None:
    # datasource_pkg_list: [sealboot_cloudinit], datasource_list: [Sealboot, None]
    found = ci.sources.list_sources(
        ["Sealboot"],
        (ci.sources.DEP_FILESYSTEM, ci.sources.DEP_NETWORK),
        ["sealboot_cloudinit"],
    )
    assert found == [ci.ds.DataSourceSealboot]
    assert (
        ci.sources.list_sources(["Sealboot"], (ci.sources.DEP_FILESYSTEM,), ["sealboot_cloudinit"])
        == []
    )
