"""Real boots with systemd as PID 1 (systemd-nspawn): cloud-init's own units, generator and
ds-identify decide, on Debian 12 (cloud-init 22.4) and 13 (25.1, ``cloud-init-main.service``).

Each boot must reach ``running`` with no failed unit and ``cloud-init status`` done without
errors; the sealed user data must take effect in the first boot, through the boothook hand-off
(agent installed, stock Ec2 datasource) and through install.sh's Sealboot datasource; no
fragment is left in moto and no payload byte reaches the journal, /var/log or the results; the
second boot of the same instance changes nothing.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.harness import InstanceNetwork, warnings
from tests.e2e.nspawn import (
    RESULTS_UNIT,
    BootTimeout,
    Mode,
    SystemdBoot,
    SystemdImages,
    SystemdInstance,
    nspawn_binary,
)
from tests.e2e.test_harness import SECRET_MARKER, agent_lines, assert_no_secret, sealed_payload

pytestmark = pytest.mark.e2e

SUITES = os.environ.get("SEALBOOT_E2E_SYSTEMD_SUITES", "bookworm trixie").split()
PLAIN_USERDATA = b"""#cloud-config
runcmd:
  - [sh, -c, 'mkdir -p /var/lib/e2e && echo "runcmd ran" > /var/lib/e2e/runcmd']
"""

NewSystemdInstance = Callable[[str, Mode], SystemdInstance]


@pytest.fixture(scope="module")
def nspawn() -> Path:
    return nspawn_binary()


@pytest.fixture(scope="module")
def systemd_images(tmp_path_factory: pytest.TempPathFactory) -> SystemdImages:
    if os.geteuid() != 0:
        pytest.fail("the systemd boots need root (debootstrap, overlayfs, systemd-nspawn)")
    return SystemdImages(tmp_path_factory.mktemp("systemd-images"))


@pytest.fixture
def new_systemd_instance(
    aws: InstanceNetwork,
    nspawn: Path,
    systemd_images: SystemdImages,
    tmp_path: Path,
) -> Iterator[NewSystemdInstance]:
    """Make instances of a suite's image for a mode; unmounted at the end of the test."""
    made: list[SystemdInstance] = []

    def make(suite: str, mode: Mode) -> SystemdInstance:
        inst = SystemdInstance(
            systemd_images.image(suite, mode),
            tmp_path / f"instance-{len(made)}",
            aws,
            nspawn,
            mode=mode,
        )
        made.append(inst)
        return inst.start()

    yield make
    for inst in made:
        inst.close()


@dataclass
class StockBoot:
    """The same image booted without sealboot: what stock cloud-init does in this container."""

    inst: SystemdInstance
    boot: SystemdBoot

    def known_warnings(self) -> set[str]:
        return {strip_time(line) for line in warnings(self.boot.cloud_init_log)}


@pytest.fixture(scope="module")
def stock_boots(
    network: InstanceNetwork,
    nspawn: Path,
    systemd_images: SystemdImages,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[str], StockBoot]]:
    """A stock Ec2 boot per suite (plain cloud-config, no sealboot), booted once, on first use."""
    made: dict[str, StockBoot] = {}

    def stock(suite: str) -> StockBoot:
        if suite not in made:
            workdir = tmp_path_factory.mktemp(f"stock-{suite}")
            image = systemd_images.image(suite, "stock")
            inst = SystemdInstance(image, workdir, network, nspawn, mode="stock").start()
            network.stack.identity.user_data = PLAIN_USERDATA
            made[suite] = StockBoot(inst, inst.power_on())
        return made[suite]

    yield stock
    for made_boot in made.values():
        made_boot.inst.close()


def strip_time(line: str) -> str:
    """A cloud-init.log line without its timestamp, to compare two boots' warnings."""
    return re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ - ", "", line)


def assert_running(boot: SystemdBoot, stock: StockBoot | None = None) -> None:
    """systemd reached ``running`` with no failed unit; cloud-init is done, with no error and
    no warning that the same image's stock Ec2 boot (*stock*) does not show too."""
    why = boot.describe()
    assert boot.returncode == 0, why
    assert boot.state == "running", why
    assert boot.failed_units == [], why
    assert boot.status == "done", why
    assert boot.status_returncode == 0, why
    assert boot.errors == [], why
    assert "enabled" in boot.run_cloud_init, f"the generator did not enable cloud-init\n{why}"
    units = boot.unit_states()
    loaded = {name: u for name, u in units.items() if u.get("LoadState") == "loaded"}
    assert {"cloud-init-local.service", "cloud-config.service", "cloud-final.service"} <= set(
        loaded
    ), why
    assert {name: u["Result"] for name, u in loaded.items()} == dict.fromkeys(loaded, "success"), (
        why
    )
    baseline = stock.boot if stock is not None else boot
    assert boot.extended_status in ("done", baseline.extended_status), why
    assert boot.recoverable_errors in ({}, baseline.recoverable_errors), why
    if stock is not None:
        extra = {strip_time(line) for line in warnings(boot.cloud_init_log)}
        assert extra <= stock.known_warnings(), why


def assert_no_payload(inst: SystemdInstance, boot: SystemdBoot, token: str) -> None:
    """Not a byte of the secret in the journal, the results, the console or /var/log."""
    assert "Cloud-init v." in boot.journal, "the journal holds cloud-init's output"
    for path in sorted(boot.out_dir.rglob("*")):
        if path.is_file():
            assert_no_secret(path.read_bytes(), token, str(path))
    assert_no_secret(boot.console.encode(), token, "the nspawn console")
    for path in inst.files_under("/var/log"):
        assert_no_secret(path.read_bytes(), token, str(path))


@pytest.mark.parametrize("suite", SUITES)
def test_stock_ec2_boot_reaches_running(
    suite: str, stock_boots: Callable[[str], StockBoot]
) -> None:
    stock = stock_boots(suite)
    boot = stock.boot

    assert_running(boot)
    assert stock.inst.read_text("/var/lib/e2e/runcmd") == "runcmd ran\n"
    assert re.search(r"^datasource_list: \[ ?Ec2, None ?\]", boot.ds_identify_cfg, re.M), (
        boot.ds_identify_cfg
    )
    # 25.1 runs as one process, cloud-init-main.service; the stage units only signal it.
    units = boot.unit_states()
    single = not stock.inst.image.rootfs.cloud_init_version.startswith("22.")
    assert (units["cloud-init-main.service"]["LoadState"] == "loaded") == single, boot.units
    if single:
        assert "Started cloud-init-main.service" in boot.journal, boot.describe()
    # cloud-init 22.4's Ec2Local always asks DHCP for a lease first; in the container it may not
    # bring eth0 up (no CAP_NET_ADMIN) and no DHCP server answers. It logs that, and the network
    # stage then finds Ec2. 25.1 sees that eth0 already has an address and skips DHCP.
    local = [line for line in warnings(boot.cloud_init_log) if "DataSourceEc2Local" in line]
    if stock.inst.image.rootfs.cloud_init_version.startswith("22."):
        assert local, boot.describe()
        assert "Datasource DataSourceEc2." in boot.output_log, boot.output_log
    assert {strip_time(line) for line in warnings(boot.cloud_init_log)} <= {
        "util.py[WARNING]: Getting data from <class "
        "'cloudinit.sources.DataSourceEc2.DataSourceEc2Local'> failed",
        "Traceback (most recent call last):",
    }, boot.describe()


@dataclass
class Boots:
    """What a test boots with: a suite's stock baseline, new instances, the AWS stack."""

    stock: Callable[[str], StockBoot]
    new: NewSystemdInstance
    aws: InstanceNetwork
    tmp_path: Path

    def sealed(self, suite: str, mode: Mode) -> tuple[SystemdInstance, str, SystemdBoot]:
        """Seal the payload, serve it as EC2 user data, boot an instance of *mode* once."""
        token = secrets.token_hex(16)
        sealed = self.aws.seal(sealed_payload(token), self.tmp_path / "seal")
        assert token.encode() not in sealed.userdata
        assert self.aws.secret_names() == sorted(sealed.manifest.fragments)
        inst = self.new(suite, mode)
        self.aws.stack.identity.user_data = sealed.userdata
        return inst, token, inst.power_on()


@pytest.fixture
def boots(
    stock_boots: Callable[[str], StockBoot],
    new_systemd_instance: NewSystemdInstance,
    aws: InstanceNetwork,
    tmp_path: Path,
) -> Boots:
    return Boots(stock_boots, new_systemd_instance, aws, tmp_path)


def assert_payload_took_effect(inst: SystemdInstance, token: str, aws: InstanceNetwork) -> None:
    secret = f"{SECRET_MARKER.decode()}-{token}"
    assert inst.read_text("/etc/e2e/secret") == f"join-token {secret}\n"
    assert inst.read_text("/var/lib/e2e/runcmd") == f"runcmd {secret}\n"
    assert inst.read_text("/var/lib/e2e/script") == f"script {secret}\n"
    assert aws.secret_names() == [], "the fragments must be deleted"
    state = json.loads(inst.read_text("/var/lib/sealboot/state.json"))
    assert (state["outcome"], state["phase"]) == ("ok", "done")
    assert state["instance_id"] == inst.instance_id


def reboot_changes_nothing(
    inst: SystemdInstance, token: str, aws: InstanceNetwork, stock: StockBoot
) -> SystemdBoot:
    """Boot the same instance again: it reaches ``running`` as cleanly, nothing per-instance
    runs again, the agent does not run, and cloud-init keeps the user data it had."""
    runs = {p: inst.path(p).stat().st_mtime_ns for p in ("/etc/e2e/secret", "/var/lib/e2e/script")}
    inst.path("/var/lib/e2e/runcmd").unlink()
    user_data_txt = f"/var/lib/cloud/instances/{inst.instance_id}/user-data.txt"
    kept = inst.read_bytes(user_data_txt)
    first = inst.systemd_boots[-1]

    again = inst.power_on()

    assert_running(again, stock)
    assert again.output_log.startswith(first.output_log)
    new = again.output_log[len(first.output_log) :]
    assert agent_lines(new) == [], new
    assert not inst.exists("/var/lib/e2e/runcmd"), "runcmd is once per instance"
    for path, mtime in runs.items():
        assert inst.path(path).stat().st_mtime_ns == mtime, path
    assert inst.read_bytes(user_data_txt) == kept, "cloud-init's copy of the user data changed"
    assert aws.secret_names() == []
    assert_no_payload(inst, again, token)
    return again


@pytest.mark.parametrize("suite", SUITES)
def test_boothook_hand_off_under_systemd(suite: str, boots: Boots) -> None:
    stock, aws = boots.stock(suite), boots.aws
    inst, token, boot = boots.sealed(suite, "boothook")

    assert_running(boot, stock)
    assert re.search(r"^datasource_list: \[ ?Ec2, None ?\]", boot.ds_identify_cfg, re.M)
    assert not inst.exists("/etc/cloud/cloud.cfg.d/96-sealboot-datasource.cfg")
    assert_payload_took_effect(inst, token, aws)
    # The boothook ran the image's agent, once.
    lines = agent_lines(boot.output_log)
    for message in ("fetched 1 fragment(s)", "deleted 1 fragment(s)", " done in "):
        assert sum(message in line for line in lines) == 1, (message, lines)
    assert_no_payload(inst, boot, token)

    again = reboot_changes_nothing(inst, token, aws, stock)

    new = again.output_log[len(boot.output_log) :]
    assert sum("nothing to do" in line for line in new.splitlines()) == 1, new


def datasource_boot(suite: str, boots: Boots) -> tuple[SystemdInstance, str]:
    """A first boot in datasource mode, which must unseal on cloud-init's first pass."""
    inst, token, boot = boots.sealed(suite, "datasource")

    assert_running(boot, boots.stock(suite))
    assert re.search(r"^datasource_list: \[ ?Sealboot, None ?\]", boot.ds_identify_cfg, re.M), (
        boot.ds_identify_cfg
    )
    assert_payload_took_effect(inst, token, boots.aws)
    # The datasource ran the agent before cloud-init read the user data; no boothook ran.
    assert boot.cloud_init_log.count("sealboot: unsealed") == 1, boot.describe()
    assert "sealboot-boothook" not in boot.output_log
    assert_no_payload(inst, boot, token)
    return inst, token


@pytest.mark.parametrize("suite", SUITES)
def test_sealboot_datasource_under_systemd(suite: str, boots: Boots) -> None:
    datasource_boot(suite, boots)


@pytest.mark.parametrize("suite", SUITES)
def test_sealboot_datasource_reboot_is_a_no_op(suite: str, boots: Boots) -> None:
    stock = boots.stock(suite)  # first: a stock boot serves other user data from IMDS
    inst, token = datasource_boot(suite, boots)

    again = reboot_changes_nothing(inst, token, boots.aws, stock)

    # On a reboot cloud-init rediscovers the datasource (no /run/cloud-init/.instance-id; Ec2
    # cannot check the instance id), which must reuse what the first boot unsealed.
    assert again.cloud_init_log.count("sealboot: unsealed") == 1, "unsealed again on reboot"
    assert "unsealed at this instance's first boot" in again.cloud_init_log, again.describe()


# --- the harness itself: what it must notice --------------------------------------------------


def test_a_failed_unit_is_seen(
    new_systemd_instance: NewSystemdInstance, aws: InstanceNetwork
) -> None:
    inst = new_systemd_instance(SUITES[0], "stock")
    aws.stack.identity.user_data = PLAIN_USERDATA
    inst.path("/etc/systemd/system/e2e-fails.service").write_text(
        "[Service]\nType=oneshot\nExecStart=/bin/false\n[Install]\nWantedBy=multi-user.target\n"
    )
    inst.path("/etc/systemd/system/multi-user.target.wants/e2e-fails.service").symlink_to(
        "/etc/systemd/system/e2e-fails.service"
    )

    boot = inst.power_on()

    assert (boot.state, boot.failed_units) == ("degraded", ["e2e-fails.service"]), boot.describe()
    with pytest.raises(AssertionError):
        assert_running(boot)


def test_a_boot_that_never_powers_off_is_stopped(
    new_systemd_instance: NewSystemdInstance, aws: InstanceNetwork
) -> None:
    inst = new_systemd_instance(SUITES[0], "stock")
    aws.stack.identity.user_data = PLAIN_USERDATA
    inst.path(f"/etc/systemd/system/multi-user.target.wants/{RESULTS_UNIT}").unlink()

    with pytest.raises(BootTimeout, match="no power-off within 8s") as caught:
        inst.power_on(timeout=8)

    assert "(not collected)" in str(caught.value)
    assert inst.systemd_boots == []
