"""The sealboot datasource against cloud-init's own classes, release by release, without booting.

``tests/e2e/ds_probe.py`` runs with each rootfs's python3 in a chroot: cloud-init's real
configuration, Paths, Distro, EC2 crawl (over HTTP to a stand-in IMDS on 169.254.169.254),
pickling and metadata refresh; only the IMDS and the agent are stand-ins. Releases: those of
:func:`tests.e2e.harness.e2e_releases`, Debian's own cloud-init (each suite of
``SEALBOOT_E2E_SUITES``, and sid) and upstream releases whose ``cloudinit/`` replaces Debian's in
the Debian 12 rootfs (the layer of :meth:`tests.e2e.harness.Images.upstream_layer`, sources from
``scripts/e2e/cloud_init_sources.py``). A missing rootfs is built by ``scripts/e2e/rootfs.sh``;
altered sources fail the test.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sealboot.render import render
from sealboot_agent.wire import (
    DEFAULT_ROOT,
    Manifest,
    gzip_deterministic,
    native_fragment_names,
    random_token,
)
from tests.e2e.agent_install import build_dist
from tests.e2e.harness import Images, e2e_releases, probe_json
from tests.e2e.netns import tool
from tests.e2e.releases import Release, resolve
from tests.e2e.test_datasource import CONFIG

pytestmark = pytest.mark.e2e

PROBE = Path(__file__).with_name("ds_probe.py")
PROBE_DIR = "/opt/sealboot-probe"
# Stands in for sealboot-agent: records the call (the manifest as M), then does what the
# probe's agent.mode says.
AGENT = """#!/bin/sh
line=""
while [ $# -gt 0 ]; do
    case "$1" in
        --manifest) line="$line --manifest M" && shift ;;
        --manifest=*) line="$line --manifest M" ;;
        *) line="$line $1" ;;
    esac
    shift
done
echo "${line# }" >>/probe-data/agent.calls
read -r mode </probe-data/agent.mode
case "$mode" in
    ok:*) exec cat "/probe-data/${mode#ok:}" ;;
    *) echo "sealboot-agent (stand-in): fetch failed" >&2; exit 5 ;;
esac
"""
# Runs under `unshare --mount --net --pid --fork`: every mount and the network vanish with it.
LAUNCH = """set -eu
lower="$1" upper="$2" work="$3" root="$4"
shift 4
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$upper,workdir=$work" "$root"
mount -t proc proc "$root/proc"
ip link set lo up
ip addr add 169.254.169.254/32 dev lo
exec chroot "$root" /usr/bin/env -i PATH="$PATH" LANG=C.UTF-8 \
    python3 /opt/sealboot-probe/ds_probe.py "$@"
"""
EC2_DMI = {
    "product_uuid": "ec2e2e00-0000-4000-8000-000000000000",
    "product_serial": "ec2e2e00-0000-4000-8000-000000000000",
    "sys_vendor": "Amazon EC2",
    "board_vendor": "Amazon EC2",
    "chassis_asset_tag": "Amazon EC2",
    "chassis_vendor": "Amazon EC2",
    "product_name": "t3.small",
}


RELEASES = [resolve(name)[0] for name in e2e_releases()]


@dataclass(frozen=True)
class Layer:
    """What a probe of one release runs on: the probe's layer over the image's lower dirs."""

    layer: Path
    lower: tuple[Path, ...]  # an upstream release's cloudinit/ layer, the rootfs


def build_layer(dest: Path) -> Path:
    """What the probe adds over the rootfs: the datasource installed, its drop-in, an EC2 DMI,
    an empty resolv.conf (no DNS to wait for), the probe and the stand-in agent."""
    site = dest / "usr/lib/python3/dist-packages/sealboot_cloudinit"
    site.mkdir(parents=True)
    for name, src in build_dist.datasource_files().items():
        shutil.copy(src, site / name)
    cfg = dest / "etc/cloud/cloud.cfg.d/96-sealboot-datasource.cfg"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(CONFIG)
    (dest / "etc/resolv.conf").write_text("")
    dmi = dest / "sys/class/dmi/id"
    dmi.mkdir(parents=True)
    for key, value in EC2_DMI.items():
        (dmi / key).write_text(value + "\n")
    probe = dest / PROBE_DIR.lstrip("/")
    probe.mkdir(parents=True)
    shutil.copy(PROBE, probe / PROBE.name)
    (probe / "agent").write_text(AGENT)
    (probe / "agent").chmod(0o755)
    (dest / "probe-data").mkdir()
    return dest


class Layers:
    """The probe layer per release, built once per run."""

    def __init__(self, images: Images, workdir: Path):
        self.images = images
        self.workdir = workdir
        self._built: dict[str, Layer] = {}

    def get(self, release: Release) -> Layer:
        if release.id not in self._built:
            # The plain image: rootfs.sh builds a rootfs not cached, and an upstream release
            # brings its cloudinit/ layer.
            lower = self.images.plain(release.id).lowerdirs()
            dest = self.workdir / f"layer-{len(self._built)}"
            self._built[release.id] = Layer(build_layer(dest), tuple(lower))
        return self._built[release.id]


@pytest.fixture(scope="session")
def layers(images: Images, tmp_path_factory: pytest.TempPathFactory) -> Layers:
    return Layers(images, tmp_path_factory.mktemp("probe-layers"))


class Probe:
    """One instance's disk (an overlay upper directory) and the probe run over it."""

    def __init__(self, release: Release, layer: Layer, workdir: Path):
        self.release = release
        self.lower = ":".join(map(str, (layer.layer, *layer.lower)))
        self.upper, self.work, self.root = workdir / "upper", workdir / "work", workdir / "root"
        for d in (self.upper / "probe-data", self.work, self.root):
            d.mkdir(parents=True)

    def put(self, name: str, data: bytes) -> None:
        """A file the probe reads as /probe-data/NAME."""
        (self.upper / "probe-data" / name).write_bytes(data)

    def log(self) -> str:
        path = self.upper / "probe-data" / "sealboot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def run(self, step: str, *args: str, timeout: float = 120) -> dict[str, Any]:
        argv = [
            tool("unshare"),
            "--mount",
            "--net",
            "--pid",
            "--fork",
            "--kill-child",
            tool("bash"),
            "-c",
            LAUNCH,
            "launch",
            self.lower,
            str(self.upper),
            str(self.work),
            str(self.root),
            step,
            *args,
        ]
        result, err = probe_json(argv, f"probe {step}", timeout)
        result["stderr"] = err
        # The upstream layer's cloudinit/ is where Debian's was; its version proves the swap.
        assert result["cloud_init_path"] == "/usr/lib/python3/dist-packages/cloudinit", result
        if self.release.upstream:
            assert result["cloud_init"] == self.release.upstream
        return result


NewProbe = Callable[[Release], Probe]


@pytest.fixture
def new_probe(layers: Layers, tmp_path: Path) -> NewProbe:
    """Make probes, each with a new instance disk in the test's tmp dir."""
    made: list[Probe] = []

    def make(release: Release) -> Probe:
        made.append(Probe(release, layers.get(release), tmp_path / f"probe-{len(made)}"))
        return made[-1]

    return make


def sha(data: bytes) -> str:
    """How the probe reports userdata_raw: its type and SHA-256."""
    return f"bytes:{hashlib.sha256(data).hexdigest()}"


def sealed(gz: bool) -> bytes:
    """User data as ``sealboot seal`` renders it (the fragments need not exist: no real agent)."""
    names = native_fragment_names(DEFAULT_ROOT, "default", "probe", "m1", 2, random_token())
    manifest = Manifest(
        backend="secrets-manager",
        format="native",
        fragments=tuple(names),
        region="us-east-1",
        sha256=hashlib.sha256(random_token().encode()).hexdigest(),
        size=100,
        raw_size=200,
        labels={"namespace": "default", "cluster": "probe", "machine": "m1"},
    )
    text = render(manifest).encode()
    return gzip_deterministic(text) if gz else text


@pytest.mark.parametrize("release", RELEASES, ids=lambda r: r.id)
def test_hostile_user_data_is_exactly_stock_ec2(release: Release, new_probe: NewProbe) -> None:
    probe = new_probe(release)

    result = probe.run("hostile")

    cases = result["cases"]
    differ = [c for c in cases if c["sealboot"] != c["ec2"] or c["agent"]]
    assert not differ, (
        f"cloud-init {result['cloud_init']}: {len(differ)} of {len(cases)} cases differ from "
        "DataSourceEc2 ([found, userdata_raw, exception]):\n"
        + "\n".join(json.dumps(c) for c in differ[:20])
    )
    # Not vacuous: EC2 itself took every case, and the corrupt gzips include broken deflate
    # streams (zlib.error out of gzip.decompress), bad CRCs and headers, and truncations.
    assert all(c["ec2"][0] is True for c in cases), [c for c in cases if c["ec2"][0] is not True]
    gunzip = Counter(c["gunzip"] for c in cases)
    assert gunzip["error"] >= 5, gunzip
    assert gunzip["BadGzipFile"] + gunzip["OSError"] >= 5, gunzip
    assert gunzip["EOFError"] >= 1, gunzip
    assert result["agent_calls"] == []
    log = probe.log()
    assert "PROBE-USERDATA-MARK" not in log, "user data reached a log line"
    assert "mine" not in log, "user data reached a log line"


def assert_refreshed(refresh: dict[str, Any], want: bytes, calls: int, cloud_init: str) -> None:
    """The refresh ran (where the release has its event), left *want* everywhere, and the agent
    had been run *calls* times in all."""
    where = json.dumps(refresh)
    assert refresh["class"] == "DataSourceSealboot", where
    if refresh["event"] == "hotplug" and int(cloud_init.split(".")[0]) < 21:  # 20.4: no HOTPLUG
        assert refresh["updated"] == "no such event in this release", where
    else:
        assert refresh["updated"] is True, where
        for key in ("userdata_raw", "get_userdata_raw", "pickled"):
            assert refresh[key] == sha(want), f"{key}: {where}"
    assert len(refresh["agent_calls"]) == calls, where


@pytest.mark.parametrize("release", RELEASES, ids=lambda r: r.id)
@pytest.mark.parametrize("older", [False, True], ids=["pickle", "older-sealboot-pickle"])
def test_refresh_after_first_boot_keeps_unsealed_user_data(
    release: Release, older: bool, new_probe: NewProbe
) -> None:
    """Hotplug, then a reboot with BOOT updates: same sealed user data, the agent now failing."""
    probe = new_probe(release)
    probe.put("sealed", sealed(gz=False))
    payload = b"#cloud-config\nruncmd: [[touch, /var/lib/probe-unsealed]]\n"
    probe.put("payload", payload)

    result = probe.run(
        "instance",
        *(["--as-older-version"] if older else []),
        *("--boot", "sealed", "ok:payload"),
        *("--refresh", "sealed", "fail", "hotplug"),
        *("--refresh", "sealed", "fail", "boot"),
    )

    boot = result["boot"]
    assert boot["exception"] is None, boot
    assert boot["found"] is True, boot
    assert boot["userdata_raw"] == sha(payload), boot
    assert boot["stored"] is True
    assert boot["agent_calls"] == [
        "fetch --handoff stdout --manifest M --instance-id i-0123456789abcdef0"
    ]
    assert len(result["refreshes"]) == 2
    for refresh in result["refreshes"]:
        assert refresh["restored"] == sha(payload), refresh
        # The agent did not run again.
        assert_refreshed(refresh, payload, calls=1, cloud_init=result["cloud_init"])
    assert "unsealed before; not fetching it again" in probe.log()


@pytest.mark.parametrize("release", RELEASES, ids=lambda r: r.id)
def test_refresh_with_other_user_data(release: Release, new_probe: NewProbe) -> None:
    """New sealed user data (changed while stopped) is unsealed, plain user data is stock EC2,
    and sealed user data the agent failed on is never fetched again (the boothook had it)."""
    probe = new_probe(release)
    first, second = b"#cloud-config\n# first\n", b"#cloud-config\n# second\n"
    plain = b"#cloud-config\n# plain\n"
    sealed_1 = sealed(gz=False)
    for name, data in [
        ("sealed-1", sealed_1),
        ("sealed-2", sealed(gz=True)),
        ("payload-1", first),
        ("payload-2", second),
        ("plain", plain),
    ]:
        probe.put(name, data)

    result = probe.run(
        "instance",
        *("--boot", "sealed-1", "ok:payload-1"),
        *("--refresh", "sealed-2", "ok:payload-2", "boot"),  # new sealed user data: unsealed
        *("--refresh", "sealed-2", "fail", "boot"),  # and remembered
        *("--refresh", "plain", "fail", "boot"),  # stock EC2; nothing remembered any more
        *("--refresh", "sealed-1", "fail", "boot"),  # tried, failed: the boothook's
        *("--refresh", "sealed-1", "ok:payload-1", "boot"),  # not tried again
    )

    assert result["boot"]["userdata_raw"] == sha(first)
    wants = [(second, 2), (second, 2), (plain, 2), (sealed_1, 3), (sealed_1, 3)]
    assert len(result["refreshes"]) == len(wants)
    for refresh, (want, calls) in zip(result["refreshes"], wants):
        assert_refreshed(refresh, want, calls, result["cloud_init"])
