"""Real boots: systemd as PID 1 in ``systemd-nspawn --boot``, cloud-init's own units deciding.

The chroot harness (:mod:`tests.e2e.harness`) runs cloud-init's four stages by hand. Here systemd
does: the generator and ds-identify decide whether cloud-init runs and with which datasource,
and its units run in their true order (on Debian 13 as the single-process
``cloud-init-main.service``). Recipe and traps: ``docs/DESIGN.md``.

- ``systemd-nspawn`` comes from ``scripts/e2e/nspawn.sh`` (unpacked into the cache; installing
  the package would upgrade the host's systemd).
- :class:`SystemdInstance` is a :class:`~tests.e2e.harness.Instance` (an overlayfs over an
  image, its upper directory in the test's tmp dir) that :meth:`SystemdInstance.power_on` boots
  in the :class:`~tests.e2e.harness.InstanceNetwork`'s namespace (``--network-namespace-path``),
  where 169.254.169.254 is the IMDSv2 emulator and moto listens on 127.0.0.1:5000.
- cloud-init identifies AWS from ``/sys/hypervisor/uuid`` (it ignores DMI in a container): a
  directory holding a uuid that starts with ``ec2`` is bound there.
- A results unit (``DefaultDependencies=no``, ``After=cloud-final.service``) starts, through
  ``systemd-run --no-block`` so that it stays outside the boot transaction, a script that waits
  for ``systemctl is-system-running --wait``, copies the state, failed units, ``cloud-init
  status --long`` and the journal to ``/results`` (bound to a host directory), and powers off.
- Every boot has a hard timeout: nspawn gets SIGTERM (a clean halt), then SIGKILL, and the test
  fails showing what the boot left.

Example::

    >>> with SystemdInstance(image, tmp / "i-1", net, nspawn_binary(), mode="boothook") as inst:
    ...     net.stack.identity.user_data = sealed.userdata
    ...     boot = inst.power_on()
    ...     assert boot.state == "running", boot.describe()
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tests.e2e.agent_install import build_artifact, clean_tmp, provision
from tests.e2e.harness import (
    SCRIPTS,
    TIMINGS,
    Image,
    Instance,
    InstanceNetwork,
    Rootfs,
    Timing,
    bake_image,
    build_rootfs,
    mount_overlay,
    plain_image,
    run_killable,
    unmount,
    warnings,
)
from tests.e2e.netns import SYSTEM_PATH

Mode = Literal["boothook", "datasource", "stock"]
"""boothook: agent installed, stock Ec2 datasource, the sealed boothook hands off; datasource:
install.sh's Sealboot datasource; stock: the stock Ec2 datasource and no sealboot at all."""

# Packages a real boot needs on top of rootfs.sh's cloud-init (iproute2 is there already).
SYSTEMD_PACKAGES = "systemd,systemd-sysv,dbus,udev"
HYPERVISOR_UUID = "ec2a7d0e-5f1c-4b8e-9d3a-0123456789ab"
RESULTS_UNIT = "sealboot-e2e-results.service"
COLLECT = "/usr/local/sbin/sealboot-e2e-collect"

# Ec2 against the emulator: ds-identify's strict check would look at DMI, which a container
# lacks; short waits, because the emulator answers at once or not at all.
EC2_CONFIG = (
    "# sealboot e2e (systemd-nspawn): the EC2 datasource talks to the IMDSv2 emulator.\n"
    'datasource: {Ec2: {strict_id: false, metadata_urls: ["http://169.254.169.254"], '
    "timeout: 5, max_wait: 30}}\n"
)
# Overrides rootfs.sh's [NoCloud, None]; in datasource mode install.sh's 96-*.cfg does that.
EC2_LIST = "datasource_list: [Ec2, None]\n"

RESULTS_UNIT_TEXT = f"""\
[Unit]
Description=sealboot e2e: collect this boot's results, then power off
# Default dependencies would order it before multi-user.target, which cloud-final follows: a loop.
DefaultDependencies=no
After=cloud-final.service
Conflicts=shutdown.target

[Service]
Type=oneshot
# Outside the boot transaction: the script waits for the boot to finish, which includes us.
ExecStart=/usr/bin/systemd-run --no-block --unit=sealboot-e2e-collect {COLLECT}
"""

# cloud-init's units: 22.4 runs four processes; 25.1 one (cloud-init-main) that the four
# stage units (cloud-init.service renamed cloud-init-network.service) only signal.
CLOUD_INIT_UNITS = (
    "cloud-init-main.service",
    "cloud-init-local.service",
    "cloud-init.service",
    "cloud-init-network.service",
    "cloud-config.service",
    "cloud-final.service",
)

COLLECT_SCRIPT = f"""\
#!/bin/sh
# sealboot e2e: wait for the boot to settle, copy what the test asserts on to /results, power off.
out=/results
CLOUD_INIT_UNITS="{" ".join(CLOUD_INIT_UNITS)}"
timeout 100 systemctl is-system-running --wait >"$out/state" 2>&1
systemctl --failed --no-legend --plain >"$out/failed" 2>&1
systemctl list-jobs --no-legend >"$out/jobs" 2>&1
cloud-init status --long >"$out/status.out" 2>&1
echo $? >"$out/status.rc"
systemctl show --property=Id,LoadState,ActiveState,Result $CLOUD_INIT_UNITS >"$out/units" 2>&1
systemd-analyze >"$out/analyze" 2>&1
# What the generator and ds-identify decided (/run is gone after the power-off).
cp /run/cloud-init/cloud.cfg "$out/ds-identify.cfg" 2>/dev/null
ls /run/cloud-init >"$out/run-cloud-init" 2>&1
journalctl -b --no-pager -o short-monotonic >"$out/journal" 2>&1
echo collected >"$out/collected"
systemctl --no-block poweroff
"""


def nspawn_binary() -> Path:
    """``systemd-nspawn``, unpacked into the cache by ``scripts/e2e/nspawn.sh`` when needed."""
    env = {**os.environ, "PATH": f"{os.environ.get('PATH', '')}:{SYSTEM_PATH}"}
    res = run_killable([str(SCRIPTS / "nspawn.sh")], 600, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"scripts/e2e/nspawn.sh exited {res.returncode}:\n{res.stderr}")
    return Path(res.stdout.strip().splitlines()[-1])


def systemd_rootfs(suite: str) -> Rootfs:
    """The cached rootfs of *suite* with systemd as init (rootfs.sh's ``SUITE+pkg,pkg``)."""
    rootfs = build_rootfs(f"{suite}+{SYSTEMD_PACKAGES}")
    # overlayfs options are comma-separated: reach the rootfs through a name without commas.
    link = rootfs.path.parent / f"{suite}+systemd"
    with contextlib.suppress(FileExistsError):
        link.symlink_to(rootfs.path.name)
    if link.resolve() != rootfs.path.resolve():
        raise RuntimeError(f"{link} does not point to {rootfs.path}")
    return dataclasses.replace(rootfs, path=link)


class SystemdImages:
    """Per suite and mode, the image a real boot starts from; each built once, on first use."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self._made: dict[tuple[str, Mode], Image] = {}
        self._pyz: Path | None = None

    def pyz(self) -> Path:
        if self._pyz is None:
            start = time.monotonic()
            self._pyz = build_artifact(self.workdir / "dist")
            TIMINGS.append(
                Timing("agent artifact (packaging/build_dist.py)", time.monotonic() - start)
            )
        return self._pyz

    def image(self, suite: str, mode: Mode) -> Image:
        if (suite, mode) not in self._made:
            if mode == "stock":
                made = plain_image(systemd_rootfs(suite))
            elif mode == "boothook":
                made = bake_image(systemd_rootfs(suite), self.workdir / suite, self.pyz())
            else:
                made = bake_datasource(self.image(suite, "boothook"), self.workdir / suite)
            self._made[suite, mode] = made
        return self._made[suite, mode]


def bake_datasource(agent: Image, workdir: Path) -> Image:
    """The *agent* image plus what ``install.sh`` adds without ``--no-datasource``: the
    Sealboot datasource package and its cloud.cfg.d drop-in, as a layer of its own."""
    layer, work, mnt = workdir / "ds-layer", workdir / "ds-work", workdir / "ds-root"
    pyz = workdir / "sealboot-agent.pyz"
    start = time.monotonic()
    mount_overlay(agent.lowerdirs(), layer, work, mnt)
    try:
        shutil.copy2(mnt / "usr/lib/sealboot/sealboot-agent.pyz", pyz)
        try:
            res = provision(mnt, pyz)
        finally:
            clean_tmp(mnt)
    finally:
        unmount(mnt)
    shutil.rmtree(work)
    mnt.rmdir()
    if res.returncode != 0 or "datasource: enabled" not in res.stderr:
        raise RuntimeError(
            f"install.sh (with the datasource) exited {res.returncode}:\n{res.stderr}"
        )
    TIMINGS.append(
        Timing(f"image {agent.suite} (install.sh with the datasource)", time.monotonic() - start)
    )
    return Image(agent.rootfs, (layer, *agent.layers), agent.python)


@dataclass
class SystemdBoot:
    """What one systemd boot left: the state systemd reached, failed units, cloud-init's view."""

    number: int
    seconds: float
    returncode: int
    console: str
    out_dir: Path
    state: str
    failed_units: list[str]
    status_long: str
    status_returncode: int
    units: str
    analyze: str
    ds_identify_cfg: str
    run_cloud_init: list[str]
    journal: str
    cloud_init_log: str
    output_log: str
    cloud_init_data: dict[str, Any] = field(default_factory=dict)  # status.json, result.json

    def status_field(self, key: str) -> str:
        """One ``key: value`` line of ``cloud-init status --long``; empty when it is not there."""
        m = re.search(rf"^{key}: (.*)$", self.status_long, re.M)
        return m.group(1).strip() if m else ""

    @property
    def status(self) -> str:
        return self.status_field("status")

    @property
    def extended_status(self) -> str:
        """cloud-init 23.4+: ``done``, ``degraded done``, ...; else the plain status."""
        return self.status_field("extended_status") or self.status

    def unit_states(self) -> dict[str, dict[str, str]]:
        """``systemctl show`` of cloud-init's units: Id -> LoadState, ActiveState, Result."""
        found: dict[str, dict[str, str]] = {}
        for block in self.units.strip().split("\n\n"):
            props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
            if "Id" in props:
                found[props.pop("Id")] = props
        return found

    @property
    def errors(self) -> list[str]:
        """cloud-init's own errors of this boot (result.json), e.g. a failing user script."""
        errs: list[str] = (
            self.cloud_init_data.get("result.json", {}).get("v1", {}).get("errors", [])
        )
        return errs

    @property
    def recoverable_errors(self) -> dict[str, list[str]]:
        """cloud-init 23.4+'s recoverable errors of every stage (status.json), by level."""
        found: dict[str, list[str]] = {}
        v1 = self.cloud_init_data.get("status.json", {}).get("v1", {})
        for stage in v1.values():
            if isinstance(stage, dict):
                for level, msgs in (stage.get("recoverable_errors") or {}).items():
                    found.setdefault(level, []).extend(msgs)
        return found

    def describe(self) -> str:
        """Everything needed to see why a boot went wrong, for assertion messages."""
        return "\n".join(
            [
                f"boot {self.number}: nspawn rc {self.returncode} after {self.seconds:.1f}s, "
                f"state {self.state!r}, failed units {self.failed_units}",
                self.status_long,
                f"--- units ---\n{self.units}",
                "--- cloud-init.log WARNING/ERROR lines ---",
                *warnings(self.cloud_init_log),
                f"--- cloud-init-output.log ---\n{self.output_log[-3000:]}",
                f"--- journal (tail) ---\n{self.journal[-6000:]}",
                f"--- nspawn console (tail) ---\n{self.console[-3000:]}",
            ]
        )


class BootTimeout(AssertionError):
    """A boot did not power off in time; the message holds what it left."""


class SystemdInstance(Instance):
    """An instance that boots with systemd as PID 1 (``systemd-nspawn --boot``)."""

    def __init__(
        self,
        image: Image,
        workdir: Path,
        network: InstanceNetwork,
        nspawn: Path,
        *,
        mode: Mode,
    ):
        super().__init__(image, workdir, network)
        self.nspawn = nspawn
        self.mode = mode
        self.systemd_boots: list[SystemdBoot] = []

    def start(self) -> SystemdInstance:
        super().start()
        self._configure()
        return self

    def _configure(self) -> None:
        """What the AMI has beyond the rootfs: Ec2 settings, the results unit (tests only)."""
        cfg = self.path("/etc/cloud/cloud.cfg.d/97-sealboot-e2e-ec2.cfg")
        cfg.write_text(EC2_CONFIG + ("" if self.mode == "datasource" else EC2_LIST))
        self.prepare_for_ec2_datasource()
        unit = self.path(f"/etc/systemd/system/{RESULTS_UNIT}")
        unit.write_text(RESULTS_UNIT_TEXT)
        wants = self.path("/etc/systemd/system/multi-user.target.wants")
        wants.mkdir(parents=True, exist_ok=True)
        (wants / RESULTS_UNIT).symlink_to(f"/etc/systemd/system/{RESULTS_UNIT}")
        collect = self.path(COLLECT)
        collect.parent.mkdir(parents=True, exist_ok=True)
        collect.write_text(COLLECT_SCRIPT)
        collect.chmod(0o755)
        hypervisor = self.workdir / "hypervisor"
        hypervisor.mkdir(exist_ok=True)
        (hypervisor / "uuid").write_text(HYPERVISOR_UUID + "\n")

    def power_on(self, timeout: float = 150) -> SystemdBoot:
        """Boot until the results unit powers the instance off; a first boot or a reboot."""
        number = len(self.systemd_boots) + 1
        out = self.workdir / f"systemd-boot-{number}"
        out.mkdir()
        argv = [
            str(self.nspawn),
            "--quiet",
            f"--directory={self.root}",
            "--boot",
            # The host runs neither systemd nor dbus: no machined, no scope unit.
            "--register=no",
            "--keep-unit",
            f"--network-namespace-path={self.network.ns.path}",
            f"--bind={out}:/results",
            f"--bind-ro={self.workdir / 'hypervisor'}:/sys/hypervisor",
            "--resolv-conf=off",
            "--timezone=off",
            "--link-journal=no",
            "--console=pipe",
        ]
        env = {
            "PATH": SYSTEM_PATH,
            # Debian 13's systemd 257 refuses the host's mixed cgroup v1/v2 hierarchy.
            "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1",
            # A writable /sys skeleton, so that the /sys/hypervisor bind has a place to go.
            "SYSTEMD_NSPAWN_API_VFS_WRITABLE": "network",
        }
        start = time.monotonic()
        # The console goes to a file: nothing to drain while waiting, and it stays for a look.
        console_log = self.workdir / f"systemd-console-{number}.log"
        with console_log.open("wb") as console_file:
            proc = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=console_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            # SIGTERM makes nspawn halt the container cleanly; then no more waiting.
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        console = console_log.read_text(errors="replace")
        seconds = time.monotonic() - start
        TIMINGS.append(Timing(f"systemd boot {self.image.suite} ({self.mode}, #{number})", seconds))
        boot = self._result(number, seconds, proc.returncode, console, out)
        if timed_out:
            raise BootTimeout(f"no power-off within {timeout}s\n{boot.describe()}")
        self.systemd_boots.append(boot)
        return boot

    def _result(
        self, number: int, seconds: float, returncode: int, console: str, out: Path
    ) -> SystemdBoot:
        def text(name: str) -> str:
            p = out / name
            return p.read_text(errors="replace") if p.exists() else ""

        data: dict[str, Any] = {}
        for name in ("status.json", "result.json"):
            p = self.path(f"/var/lib/cloud/data/{name}")
            if p.exists():
                data[name] = json.loads(p.read_text())
        rc = text("status.rc").strip()
        return SystemdBoot(
            number=number,
            seconds=seconds,
            returncode=returncode,
            console=console,
            out_dir=out,
            state=text("state").strip() if text("collected") else "(not collected)",
            failed_units=[line.split()[0] for line in text("failed").splitlines() if line.strip()],
            status_long=text("status.out"),
            status_returncode=int(rc) if rc else -1,
            units=text("units"),
            analyze=text("analyze"),
            ds_identify_cfg=text("ds-identify.cfg"),
            run_cloud_init=text("run-cloud-init").split(),
            journal=text("journal"),
            cloud_init_log=self._log("/var/log/cloud-init.log"),
            output_log=self._log("/var/log/cloud-init-output.log"),
            cloud_init_data=data,
        )
