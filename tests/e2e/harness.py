"""Simulated EC2 instances that boot through real cloud-init, and the AWS stack they talk to.

The pieces (the classes are context managers that clean up what they started):

- :func:`build_rootfs` runs ``scripts/e2e/rootfs.sh``: a debootstrap'd Debian with cloud-init,
  cached outside the repository and never written to by a test.
- :func:`bake_image` is the AMI build: an overlayfs over the rootfs whose upper directory
  receives the agent, ``make dist``'s artifact installed by ``packaging/install.sh``
  (:func:`tests.e2e.agent_install.install_agent`). After unmounting, that
  upper directory is a read-only *layer* that every instance stacks over the rootfs.
- :class:`InstanceNetwork` is the instance's network: a :class:`~tests.e2e.netns.NetNamespace`
  with moto server on 127.0.0.1:5000 and the strict IMDSv2 emulator on 169.254.169.254:80, the
  addresses the agent uses by default and that the sealed manifest records. Setup calls (IAM,
  STS, listing secrets) run on the namespace's thread; the ``sealboot`` CLI runs under
  ``nsenter``.
- :class:`Instance` is one instance: a private overlayfs (upper and work directories in the
  test's tmp dir) over the image, a NoCloud seed, and :meth:`Instance.boot`, which runs
  ``scripts/e2e/boot.sh`` (the four cloud-init stages) under
  ``nsenter --net=NETNS unshare --mount --uts --ipc --pid --fork``. Booting again is a reboot:
  ``/run`` is new, ``/var`` is kept, nothing is cleaned. A new instance is a new overlay.

Example::

    >>> image = bake_image(build_rootfs("bookworm"), tmp / "image", build_artifact(tmp / "dist"))
    >>> with InstanceNetwork(tmp / "net") as net, Instance(image, tmp / "i-1", net) as inst:
    ...     inst.seed(b"#cloud-config\\nruncmd: [[touch, /x]]\\n")
    ...     result = inst.boot()
    ...     assert result.ok, result.describe()
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sealboot_agent.wire import Manifest
from tests.e2e.agent_install import TargetPython, build_artifact, install_agent, root_python
from tests.e2e.netns import IMDS_ADDRESS, SYSTEM_PATH, NetNamespace, tool
from tests.e2e.releases import Release, release_ids, resolve, upstream_sources
from tests.stack.imds import Hit
from tests.stack.local import LocalStack

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts" / "e2e"
BIN = Path(sys.executable).parent
CACHE = Path(os.environ.get("SEALBOOT_CACHE", "/var/cache/sealboot"))
SUITES = ("bullseye", "bookworm", "trixie")
STAGES = ("init-local", "init", "modules-config", "modules-final")
MOTO_HOST = "127.0.0.1"
MOTO_PORT = 5000
MOTO_URL = f"http://{MOTO_HOST}:{MOTO_PORT}"
REGION = "us-east-1"
INSTANCE_ID = "i-0123456789abcdef0"


def run_killable(
    argv: Sequence[str], timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run *argv* in a session of its own; past *timeout*, kill the whole group (TimeoutError)."""
    proc = subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise TimeoutError(f"{argv[0]} did not finish in {timeout}s:\n{err[-4000:]}") from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def probe_json(argv: Sequence[str], what: str, timeout: float) -> tuple[dict[str, Any], str]:
    """A probe's JSON answer and its stderr; the test fails if it hangs or exits non-zero."""
    import pytest

    try:
        res = run_killable(argv, timeout, env={"PATH": SYSTEM_PATH})
    except TimeoutError as exc:
        pytest.fail(f"{what}: {exc}")
    if res.returncode != 0:
        pytest.fail(f"{what} exited {res.returncode}:\n{res.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(res.stdout)
    return result, res.stderr


@dataclass
class Timing:
    """One measured step, for the run's summary."""

    what: str
    seconds: float


TIMINGS: list[Timing] = []
# Said loudly at the end of the run: what this run could not cover, and why.
NOTICES: list[str] = []


def _timed(what: str, start: float) -> float:
    seconds = time.monotonic() - start
    TIMINGS.append(Timing(what, seconds))
    return seconds


# --- rootfs and image -------------------------------------------------------------------------


@dataclass(frozen=True)
class Rootfs:
    """A cached rootfs built by ``scripts/e2e/rootfs.sh``."""

    suite: str
    path: Path
    info: dict[str, str]
    seconds: float

    @property
    def cloud_init_version(self) -> str:
        """Debian's package version, e.g. ``22.4.2-1+deb12u4``."""
        return self.info["cloud-init"]

    @property
    def python_version(self) -> str:
        return self.info["python3"]


def build_rootfs(suite: str, cache: Path = CACHE) -> Rootfs:
    """Build or reuse the rootfs for *suite*; fail loudly when the mirror cannot serve it."""
    start = time.monotonic()
    res = subprocess.run(
        [str(SCRIPTS / "rootfs.sh"), suite],
        env={**os.environ, "SEALBOOT_CACHE": str(cache)},
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if res.returncode != 0:
        raise RuntimeError(f"scripts/e2e/rootfs.sh {suite} exited {res.returncode}:\n{res.stderr}")
    path = Path(res.stdout.strip().splitlines()[-1])
    info: dict[str, str] = {}
    for line in (path / ".sealboot-rootfs.info").read_text().splitlines():
        key, _, value = line.partition(": ")
        info[key] = value
    how = "cached" if f"{suite}: cached at" in res.stderr else "built"
    seconds = _timed(
        f"rootfs {suite} ({how}; cloud-init {info['cloud-init']}, python3 {info['python3']})",
        start,
    )
    return Rootfs(suite, path, info, seconds)


def mount_overlay(lower: Sequence[Path], upper: Path, work: Path, target: Path) -> None:
    """Mount an overlayfs; the first of *lower* is the topmost read-only layer."""
    for d in (upper, work, target):
        d.mkdir(parents=True, exist_ok=True)
    opts = f"lowerdir={':'.join(map(str, lower))},upperdir={upper},workdir={work}"
    subprocess.run(
        [tool("mount"), "-t", "overlay", "overlay", "-o", opts, str(target)],
        check=True,
        capture_output=True,
        timeout=30,
    )


def unmount(target: Path) -> None:
    res = subprocess.run([tool("umount"), str(target)], capture_output=True, text=True, check=False)
    if res.returncode != 0 and os.path.ismount(target):
        # Something still uses it (a process the test left); detach so the tmp dir can go.
        subprocess.run([tool("umount"), "--lazy", str(target)], capture_output=True, check=False)


@dataclass(frozen=True)
class Image:
    """What an AMI is here: the cached rootfs plus read-only layers (the installed agent, an
    upstream cloud-init)."""

    rootfs: Rootfs
    layers: tuple[Path, ...]
    python: TargetPython | None  # the agent's interpreter, when the agent is installed
    name: str = ""  # the release id it was made for (tests.e2e.releases), if not the suite

    @property
    def suite(self) -> str:
        return self.rootfs.suite

    @property
    def label(self) -> str:
        """For timings and messages: the release id, else the suite."""
        return self.name or self.rootfs.suite

    def lowerdirs(self) -> list[Path]:
        return [*self.layers, self.rootfs.path]


def bake_image(rootfs: Rootfs, workdir: Path, pyz: Path, base: Image | None = None) -> Image:
    """Install the agent artifact *pyz* into a new layer over *rootfs* (or over the image
    *base*), as an image build would (packaging/install.sh)."""
    start = time.monotonic()
    base = base or plain_image(rootfs)
    layer = workdir / "agent-layer"
    with new_layer(base.lowerdirs(), layer, workdir / "bake") as mnt:
        target = root_python(mnt)
        install_agent(mnt, pyz)
    _timed(f"image {base.label} (install the agent)", start)
    return Image(base.rootfs, (layer, *base.layers), target, base.name)


@contextlib.contextmanager
def new_layer(lower: Sequence[Path], layer: Path, scratch: Path) -> Iterator[Path]:
    """Mount an overlayfs over *lower* whose upper directory is *layer*; yields the mount point.
    What is written there is, once unmounted, a read-only layer to stack over *lower*."""
    work, mnt = Path(f"{scratch}-work"), Path(f"{scratch}-root")
    mount_overlay(lower, layer, work, mnt)
    try:
        yield mnt
    finally:
        unmount(mnt)
    shutil.rmtree(work)
    mnt.rmdir()


def upstream_cloudinit_layer(rootfs: Rootfs, tree: Path, workdir: Path) -> Path:
    """A layer over *rootfs* whose ``cloudinit/`` package is upstream's from source *tree*
    (an opaque directory: nothing of Debian's shows through), compiled by the rootfs's python3
    so that no boot spends time on it."""
    layer, package = workdir / "layer", "/usr/lib/python3/dist-packages/cloudinit"
    with new_layer([rootfs.path], layer, workdir / "build") as mnt:
        shutil.rmtree(mnt / package.lstrip("/"))
        shutil.copytree(tree / "cloudinit", mnt / package.lstrip("/"), symlinks=True)
        compile_ = [tool("chroot"), str(mnt), "/usr/bin/python3", "-m", "compileall", "-q"]
        res = run_killable([*compile_, package], 600, env={"PATH": SYSTEM_PATH})
        if res.returncode != 0:
            raise RuntimeError(f"compileall of {tree.name}'s cloudinit/ failed:\n{res.stdout}")
    return layer


def as_release(rootfs: Rootfs, release: Release, tree: Path) -> Rootfs:
    """*rootfs* as seen through the upstream layer: its cloud-init is *release*'s."""
    assert release.upstream is not None
    info = {**rootfs.info, "cloud-init": release.upstream, "cloud-init-source": str(tree)}
    return Rootfs(rootfs.suite, rootfs.path, info, rootfs.seconds)


def plain_image(rootfs: Rootfs) -> Image:
    """The rootfs as it is, without the agent."""
    return Image(rootfs, (), None)


# --- the images one test run uses ------------------------------------------------------------


def e2e_suites() -> list[str]:
    """The suites the tests boot; a suite the mirror cannot serve fails the run, never skips."""
    suites = os.environ.get("SEALBOOT_E2E_SUITES", " ".join(SUITES)).split()
    if not suites:
        raise ValueError("SEALBOOT_E2E_SUITES is empty; name at least one Debian suite")
    return suites


@functools.cache
def _release_ids() -> tuple[str, ...]:
    return tuple(release_ids(e2e_suites(), NOTICES))


def e2e_releases() -> list[str]:
    """The cloud-init releases the tests boot, as image names for :class:`Images`: Debian's
    suites, sid, and upstream releases over bookworm (:mod:`tests.e2e.releases`)."""
    return list(_release_ids())


class Images:
    """Rootfs and baked images per release, built once per run on first use.

    An image name is a Debian suite (``bookworm``, ``bookworm+awscli``) or a release id of
    :mod:`tests.e2e.releases` (``24.4.1 (RHEL 9.6-10)``, ``24.4.1 (RHEL 9.6-10)+awscli``).
    """

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self._rootfs: dict[str, Rootfs] = {}
        self._baked: dict[str, Image] = {}
        self._upstream: dict[str, tuple[Path, Path]] = {}
        self._pyz: Path | None = None

    def rootfs(self, suite: str) -> Rootfs:
        if suite not in self._rootfs:
            self._rootfs[suite] = build_rootfs(suite)
        return self._rootfs[suite]

    def upstream_layer(self, version: str) -> tuple[Path, Path]:
        """Upstream *version*'s ``cloudinit/`` as a layer over bookworm (built once per run;
        it fits ``bookworm+awscli`` too), and the source tree it came from."""
        if version not in self._upstream:
            start = time.monotonic()
            tree = upstream_sources().tree(version)
            layer = upstream_cloudinit_layer(
                self.rootfs("bookworm"), tree, self.workdir / f"cloud-init-{version}"
            )
            _timed(f"upstream cloud-init {version} layer (copy, compileall)", start)
            self._upstream[version] = (layer, tree)
        return self._upstream[version]

    def plain(self, name: str) -> Image:
        """The rootfs with cloud-init (upstream's for an upstream release), nothing of sealboot."""
        release, extra = resolve(name)
        rootfs = self.rootfs(release.suite + extra)
        if release.upstream is None:
            return Image(rootfs, (), None, name if name != rootfs.suite else "")
        layer, tree = self.upstream_layer(release.upstream)
        return Image(as_release(rootfs, release, tree), (layer,), None, name)

    def with_agent(self, name: str) -> Image:
        """The image plus sealboot-agent installed as an image build would."""
        if name not in self._baked:
            if self._pyz is None:
                start = time.monotonic()
                self._pyz = build_artifact(self.workdir / "dist")
                _timed("agent artifact (packaging/build_dist.py)", start)
            base = self.plain(name)
            workdir = self.workdir / re.sub(r"[^A-Za-z0-9.+-]+", "_", name)
            self._baked[name] = bake_image(base.rootfs, workdir, self._pyz, base)
        return self._baked[name]


# --- the instance's network and the AWS stack ------------------------------------------------


@dataclass
class Sealed:
    """User data sealed by the real ``sealboot seal``."""

    manifest: Manifest
    manifest_path: Path
    userdata_path: Path
    payload: bytes

    @property
    def userdata(self) -> bytes:
        return self.userdata_path.read_bytes()


def _instance_stack(region: str, log_dir: Path) -> LocalStack:
    """A LocalStack whose moto and IMDS listen where a real instance looks for them.

    Must be called on the namespace's thread: the IMDS server binds when it is created.
    """
    return LocalStack(
        region=region,
        log_dir=log_dir,
        moto_host=MOTO_HOST,
        moto_port=MOTO_PORT,
        imds_host=IMDS_ADDRESS,
        imds_port=80,
        instance_id=INSTANCE_ID,
    )


class InstanceNetwork:
    """A network namespace holding the local AWS stack at an instance's addresses."""

    def __init__(self, workdir: Path, region: str = REGION):
        self.workdir = workdir
        self.region = region
        self.ns = NetNamespace(workdir / "netns")
        self._stack: LocalStack | None = None

    @property
    def stack(self) -> LocalStack:
        if self._stack is None:
            raise RuntimeError("the instance network is not started")
        return self._stack

    def start(self) -> InstanceNetwork:
        start = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ns.open()
        try:
            self._stack = self.ns.call(_instance_stack, self.region, self.workdir)
            self.ns.call(self.stack.start)
        except BaseException:
            self.stop()
            raise
        _timed("instance network (netns, moto server, IMDS)", start)
        return self

    def stop(self) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            try:
                self.ns.call(stack.stop)
            finally:
                stack.moto.stop()  # idempotent; makes sure the child is gone
        self.ns.close()

    def __enter__(self) -> InstanceNetwork:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        """An empty account with a fresh instance role; IMDS forgets its requests and tokens."""
        self.ns.call(self.stack.reset)

    def imds_hits(self) -> list[Hit]:
        return self.stack.imds.hits

    def secret_names(self) -> list[str]:
        def names() -> list[str]:
            out: list[str] = []
            for page in self.stack.secrets().get_paginator("list_secrets").paginate():
                out.extend(s["Name"] for s in page["SecretList"])
            return sorted(out)

        return self.ns.call(names)

    def sealboot(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        """The real ``sealboot`` CLI, as a controller with the admin keys, in the namespace."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": "/nonexistent",
            **self.stack.admin_keys,
        }
        return subprocess.run(
            self.ns.command([str(BIN / "sealboot"), *args]),
            env=env,
            capture_output=True,
            timeout=timeout,
            check=False,
        )

    def seal(self, payload: bytes, workdir: Path, *extra: str, machine: str = "worker-0") -> Sealed:
        workdir.mkdir(parents=True, exist_ok=True)
        src, manifest_path = workdir / "userdata.in", workdir / "manifest.json"
        out = workdir / "userdata.mime"
        src.write_bytes(payload)
        res = self.sealboot(
            "seal",
            "--namespace",
            "default",
            "--cluster",
            "e2e",
            "--machine",
            machine,
            "--region",
            self.region,
            "--endpoint-url",
            MOTO_URL,
            "--manifest-out",
            str(manifest_path),
            "-o",
            str(out),
            *extra,
            str(src),
        )
        if res.returncode != 0:
            raise RuntimeError(f"sealboot seal exited {res.returncode}: {res.stderr.decode()}")
        manifest = Manifest.from_json(manifest_path.read_text())
        return Sealed(manifest, manifest_path, out, payload)


# --- instances ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageResult:
    name: str
    returncode: int
    seconds: float
    output: str


@dataclass
class BootResult:
    """What one boot left: per-stage exit codes and output, status, and the logs after it."""

    number: int
    stages: list[StageResult]
    status_long: str
    status_returncode: int
    seconds: float
    output_log: str
    cloud_init_log: str
    out_dir: Path
    cloud_init_data: dict[str, Any] = field(default_factory=dict)  # status.json, result.json

    @property
    def returncodes(self) -> dict[str, int]:
        return {s.name: s.returncode for s in self.stages}

    def stage(self, name: str) -> StageResult:
        return next(s for s in self.stages if s.name == name)

    @property
    def status(self) -> str:
        """``status:`` of ``cloud-init status --long`` (``done``, ``error``, ...)."""
        m = re.search(r"^status: (.*)$", self.status_long, re.M)
        return m.group(1).strip() if m else ""

    @property
    def extended_status(self) -> str:
        """cloud-init 23.4+ only: ``done``, ``degraded done``, ..., else the plain status."""
        m = re.search(r"^extended_status: (.*)$", self.status_long, re.M)
        return m.group(1).strip() if m else self.status

    @property
    def ok(self) -> bool:
        return (
            [s.name for s in self.stages] == list(STAGES)
            and all(s.returncode == 0 for s in self.stages)
            and self.status_returncode == 0
            and self.extended_status == "done"
        )

    def describe(self) -> str:
        """Everything needed to see why a boot went wrong, for assertion messages."""
        parts = [
            f"boot {self.number}: {self.returncodes}, status rc {self.status_returncode}",
            self.status_long,
            *(f"--- {s.name} output ---\n{s.output[-3000:]}" for s in self.stages),
            f"--- cloud-init-output.log ---\n{self.output_log[-4000:]}",
            "--- cloud-init.log WARNING/ERROR lines ---",
            *warnings(self.cloud_init_log),
        ]
        return "\n".join(parts)


def expected_cloud_init(image: Image) -> str:
    """The cloud-init version *image* must run: Debian's upstream part, or the swapped release."""
    return image.rootfs.cloud_init_version.split("-")[0]


def run_copies(image: Image) -> set[str]:
    """Where cloud-init itself keeps the sealed configuration until reboot: 23.4+ writes the
    merged configuration, the hand-off's cloud.cfg.d part included, to
    /run/cloud-init/combined-cloud-config.json (0600, tmpfs)."""
    major, minor = (int(x) for x in expected_cloud_init(image).split(".")[:2])
    return {"/run/cloud-init/combined-cloud-config.json"} if (major, minor) >= (23, 4) else set()


def cloud_init_versions(result: BootResult) -> set[str]:
    """Every version cloud-init announced in cloud-init-output.log (one per stage and boot)."""
    return set(re.findall(r"^Cloud-init v\. (\S+) ", result.output_log, re.M))


_PROBLEM_RE = re.compile(r"\[(WARNING|ERROR|CRITICAL)\]|Traceback")


def warnings(cloud_init_log: str) -> list[str]:
    """Lines of cloud-init.log at WARNING or worse, and tracebacks."""
    return [line for line in cloud_init_log.splitlines() if _PROBLEM_RE.search(line)]


class Instance:
    """One simulated instance: its own overlayfs over an image, seeded through NoCloud."""

    def __init__(
        self,
        image: Image,
        workdir: Path,
        network: InstanceNetwork,
        *,
        instance_id: str | None = None,
        hostname: str = "ip-10-0-0-10",
    ):
        self.image = image
        self.workdir = workdir
        self.network = network
        # NoCloud's instance id (cloud-init's INSTANCE_ID) is the one IMDS reports.
        self.instance_id = instance_id or network.stack.identity.instance_id
        self.hostname = hostname
        self.root = workdir / "root"
        self.boots: list[BootResult] = []
        self._mounted = False

    # lifecycle

    def start(self) -> Instance:
        mount_overlay(
            self.image.lowerdirs(), self.workdir / "upper", self.workdir / "work", self.root
        )
        self._mounted = True
        return self

    def close(self) -> None:
        if self._mounted:
            unmount(self.root)
            self._mounted = False

    def __enter__(self) -> Instance:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # files

    def path(self, path: str) -> Path:
        """*path* inside the instance, as a host path."""
        return self.root / path.lstrip("/")

    def read_bytes(self, path: str) -> bytes:
        return self.path(path).read_bytes()

    def read_text(self, path: str) -> str:
        return self.path(path).read_text(errors="replace")

    def exists(self, path: str) -> bool:
        return os.path.lexists(self.path(path))

    def files_under(self, path: str) -> Iterator[Path]:
        """Every regular file under *path* in the instance."""
        for p in sorted(self.path(path).rglob("*")):
            if p.is_file() and not p.is_symlink():
                yield p

    def written_files(self) -> Iterator[tuple[str, Path]]:
        """``(instance path, host path)`` of every regular file the instance wrote or changed.

        These are the files of the overlay's upper directory: whatever booting left on disk.
        """
        upper = self.workdir / "upper"
        for p in sorted(upper.rglob("*")):
            if p.is_file() and not p.is_symlink():
                yield "/" + str(p.relative_to(upper)), p

    # NoCloud

    def prepare_for_ec2_datasource(self) -> None:
        """What an EC2 boot needs in this chroot beyond the IMDS emulator (not in a real AMI).

        No DNS in the namespace: an empty resolv.conf fails cloud-init's "is the metadata URL
        resolvable" probe at once instead of after an 18 s timeout. And a real image has a
        network renderer, which cloud-init 25.1's EC2 network config looks up even with network
        config disabled: give the chroot ifupdown's files (never run).
        """
        self.path("/etc/resolv.conf").write_text("")
        self.path("/etc/network").mkdir(exist_ok=True)
        self.path("/etc/network/interfaces").touch()
        for name in ("ifup", "ifdown", "ifquery"):
            stub = self.path(f"/usr/sbin/{name}")
            if not stub.exists():
                stub.write_text("#!/bin/sh\nexit 0\n")
                stub.chmod(0o755)

    def seed(self, user_data: bytes, *, vendor_data: bytes | None = None) -> None:
        """Write the NoCloud seed: meta-data (instance id, hostname) and *user_data*."""
        seed = self.path("/var/lib/cloud/seed/nocloud")
        seed.mkdir(parents=True, exist_ok=True)
        meta = f"instance-id: {self.instance_id}\nlocal-hostname: {self.hostname}\n"
        (seed / "meta-data").write_text(meta)
        (seed / "user-data").write_bytes(user_data)
        os.chmod(seed / "user-data", 0o600)
        if vendor_data is not None:
            (seed / "vendor-data").write_bytes(vendor_data)

    # running things

    def _namespaced(self, argv: Sequence[str]) -> list[str]:
        return self.network.ns.command(
            [
                tool("unshare"),
                "--mount",
                "--uts",
                "--ipc",
                "--pid",
                "--fork",
                "--kill-child",
                f"--mount-proc={self.root}/proc",
                "--",
                *argv,
            ]
        )

    def _run(self, argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return run_killable(argv, timeout)

    def chroot(self, argv: Sequence[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run *argv* in the instance (chroot, own PID/mount namespaces, its network), no /run."""
        env = ["env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
        return self._run(self._namespaced([tool("chroot"), str(self.root), *env, *argv]), timeout)

    def boot(self, timeout: float = 300) -> BootResult:
        """Run cloud-init's four stages (a first boot, or a reboot when booted before)."""
        if not self._mounted:
            raise RuntimeError("start() the instance first")
        number = len(self.boots) + 1
        out = self.workdir / f"boot-{number}"
        start = time.monotonic()
        res = self._run(
            self._namespaced(
                [tool("bash"), str(SCRIPTS / "boot.sh"), str(self.root), str(out), self.hostname]
            ),
            timeout,
        )
        seconds = _timed(f"boot {self.image.label} (four stages)", start)
        if res.returncode != 0:
            raise RuntimeError(f"boot.sh exited {res.returncode}:\n{res.stdout}\n{res.stderr}")
        stages = []
        for line in (out / "stages").read_text().splitlines():
            name, rc, t0, t1 = line.split()
            text = (out / f"{name}.out").read_text(errors="replace")
            stages.append(StageResult(name, int(rc), float(t1) - float(t0), text))
        # /run/cloud-init/{status,result}.json link to these.
        run_ci: dict[str, Any] = {}
        for name in ("status.json", "result.json"):
            p = self.path(f"/var/lib/cloud/data/{name}")
            if p.exists():
                run_ci[name] = json.loads(p.read_text())
        result = BootResult(
            number=number,
            stages=stages,
            status_long=(out / "status.out").read_text(errors="replace"),
            status_returncode=int((out / "status.rc").read_text()),
            seconds=seconds,
            output_log=self._log("/var/log/cloud-init-output.log"),
            cloud_init_log=self._log("/var/log/cloud-init.log"),
            out_dir=out,
            cloud_init_data=run_ci,
        )
        self.boots.append(result)
        return result

    def _log(self, path: str) -> str:
        return self.read_text(path) if self.exists(path) else ""


NewInstance = Callable[[Image], Instance]
"""The ``new_instance`` fixture: make (and start) an instance of an image."""
