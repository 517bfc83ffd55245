"""Boot-path latency: the rendered boothook, run by bash as cloud-init (and the functional
tests) run it, once with ``sealboot-agent`` on PATH and once with only the system's tools (the
boothook's AWS CLI v2 fallback), for the same payload, each run on a fresh instance root with
freshly sealed fragments. Also a bare ``sealboot-agent fetch`` for the agent's own footprint.

Example::

    >>> rows = run_latency(stack, work, sizes=[20 * 1024], runs=5)
"""

from __future__ import annotations

import email
import gzip
import json
import shutil
import statistics
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bench.payload import cloud_config
from bench.procs import Measured, measured, probed
from bench.stack import BenchStack
from sealboot.render import render_userdata
from sealboot.seal import SealConfig, seal
from sealboot_agent.wire import (
    CAPA_FRAGMENT_SIZE,
    FORMAT_CAPA,
    FORMAT_NATIVE,
    Manifest,
    gzip_deterministic,
)

BIN = Path(sys.executable).parent
AWS_CLI = Path("/usr/bin/aws")
AGENT = "agent"
CLI = "cli"
MODES = (AGENT, CLI)


@dataclass(frozen=True)
class Boot:
    mode: str
    size: int
    m: Measured
    aws: dict[str, int]
    imds: int
    ok: bool
    problem: str = ""
    # The agent's own work once it holds credentials (fetch, verify, write, delete, hand-off),
    # from the phase times in its state file: all that the number of fragments changes.
    work: float | None = None


@dataclass
class Series:
    """Every measured run of one mode at one size."""

    mode: str
    size: int
    boots: list[Boot] = field(default_factory=list)

    @property
    def walls(self) -> list[float]:
        return [b.m.wall for b in self.boots]

    @property
    def median(self) -> float:
        return statistics.median(self.walls)

    @property
    def failures(self) -> list[str]:
        return [b.problem for b in self.boots if not b.ok]

    def summary(self) -> dict[str, Any]:
        aws = Counter[str]()
        for b in self.boots:
            aws.update(b.aws)
        n = len(self.boots)
        data: dict[str, Any] = {
            "mode": self.mode,
            "size": self.size,
            "runs": n,
            "wall_median": round(self.median, 4),
            "wall_min": round(min(self.walls), 4),
            "wall_max": round(max(self.walls), 4),
            "walls": [round(w, 4) for w in self.walls],
            "cpu_median": round(statistics.median(b.m.cpu for b in self.boots), 4),
            "aws_requests_per_boot": {k: v / n for k, v in sorted(aws.items())},
            "imds_requests_per_boot": sum(b.imds for b in self.boots) / n,
            "failures": self.failures,
        }
        works = [b.work for b in self.boots if b.work is not None]
        if works:
            data["agent_work_median"] = round(statistics.median(works), 4)
        if self.mode == "fetch":  # probed; a direct child's ru_maxrss is the bench's own peak
            data["peak_rss_mb"] = round(max(b.m.maxrss_kb for b in self.boots) / 1024, 1)
        return data


def aws_cli_version() -> str | None:
    """The AWS CLI v2 the fallback uses, or None when it is not installed."""
    if not AWS_CLI.exists():
        return None
    try:
        out = subprocess.run(
            [str(AWS_CLI), "--version"], capture_output=True, text=True, timeout=60, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.split()[0] if out.startswith("aws-cli/2.") else None


def boothook_of(userdata: bytes) -> bytes:
    """The boothook part's script, without its ``#cloud-boothook`` line (as cloud-init runs
    it; the same extraction as tests/functional/conftest.py's ``Instance.boot``)."""
    if userdata[:2] == b"\x1f\x8b":
        userdata = gzip.decompress(userdata)
    msg = email.message_from_bytes(userdata)
    part = next(p for p in msg.walk() if p.get_content_type() == "text/cloud-boothook")
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        raise ValueError("the boothook part has no payload")
    return payload.split(b"\n", 1)[1]


def agent_work(root: Path) -> float | None:
    """Seconds from the agent's "credentials" phase to "done" (its state file), if it got there."""
    try:
        times = json.loads((root / "var/lib/sealboot/state.json").read_text())["times"]
        return float(times["done"]) - float(times["credentials"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def fetch_args(manifest: Manifest, root: Path) -> list[str]:
    """``sealboot-agent`` arguments for one bare fetch of *manifest* into *root*."""
    return [
        "fetch",
        "--handoff",
        "cloud-init",
        "--manifest",
        manifest.to_json(),
        "--root",
        str(root),
    ]


class Bench:
    """Seals and boots on one stack; counts each boot's AWS and IMDS requests."""

    def __init__(self, stack: BenchStack, work: Path, agent: Path | None = None) -> None:
        self.stack = stack
        self.work = work
        # Another sealboot-agent to measure (a patched copy): first on PATH for the boothook.
        self.agent = agent or BIN / "sealboot-agent"
        self.client = stack.client("secretsmanager", via_proxy=True)
        self.n = 0

    def seal(self, payload: bytes, fmt: str = FORMAT_NATIVE) -> Manifest:
        self.n += 1
        return seal(
            payload,
            namespace="bench",
            cluster="latency",
            machine=f"node-{self.n}",
            config=SealConfig(
                region=self.stack.region, endpoint_url=self.stack.proxy.url, format=fmt
            ),
            client=self.client,
        )

    def fresh_root(self) -> Path:
        root = self.work / f"latency-{self.n:03d}" / "root"
        root.mkdir(parents=True)
        return root

    def env(self, root: Path, mode: str) -> dict[str, str]:
        return {
            # As tests/functional: the venv's bin (sealboot-agent) first, or only the system's
            # tools, so the boothook falls back to /usr/bin/aws.
            "PATH": f"{self.agent.parent}:{BIN}:/usr/sbin:/usr/bin:/sbin:/bin"
            if mode == AGENT
            else "/usr/bin:/bin",
            "INSTANCE_ID": self.stack.imds.identity.instance_id,
            "SEALBOOT_IMDS_ENDPOINT": self.stack.imds.url,
            "SEALBOOT_DEADLINE": "60",
            "HOME": str(root),
            "SEALBOOT_ROOT": str(root),
        }

    def _counted(self, run: Any) -> tuple[Measured, dict[str, int], int]:
        calls0 = self.stack.proxy.calls
        hits0 = len(self.stack.imds.hits)
        m = run()
        calls = self.stack.proxy.calls
        calls.subtract(calls0)
        return m, {k: v for k, v in calls.items() if v}, len(self.stack.imds.hits) - hits0

    def _check(self, manifest: Manifest, root: Path, payload: bytes, m: Measured) -> str:
        if m.timed_out:
            return "timed out"
        if m.returncode != 0:
            log = root / "var/log/cloud-init-output.log"
            tail = log.read_text().strip().splitlines()[-1:] if log.exists() else []
            return f"exit {m.returncode}: {' '.join(tail)}"
        private = root / "var/lib/sealboot/userdata"
        if not private.exists() or private.read_bytes() != payload:
            return "user data not written, or different"
        left = set(manifest.fragments) & set(self.stack.secret_names())
        return f"{len(left)} fragment(s) left" if left else ""

    def boot(self, payload: bytes, mode: str, fmt: str = FORMAT_NATIVE) -> Boot:
        """Seal *payload* afresh (in format *fmt*), render it, and boot the boothook on a
        fresh root."""
        manifest = self.seal(payload, fmt)
        root = self.fresh_root()
        hook = root.parent / "boothook.sh"
        hook.write_bytes(boothook_of(render_userdata(manifest)))
        hook.chmod(0o700)
        env = self.env(root, mode)
        m, aws, imds = self._counted(lambda: measured([str(hook)], env=env, timeout=180, cwd="/"))
        problem = self._check(manifest, root, payload, m)
        work = agent_work(root)
        shutil.rmtree(root.parent, ignore_errors=True)
        label = mode if fmt == FORMAT_NATIVE else f"{mode}-{fmt}"
        return Boot(label, len(payload), m, aws, imds, not problem, problem, work)

    def fetch(self, payload: bytes) -> Boot:
        """``sealboot-agent fetch`` alone (no bash), for the agent's own RSS and CPU."""
        manifest = self.seal(payload)
        root = self.fresh_root()
        cmd = [str(self.agent), *fetch_args(manifest, root)]
        env = self.env(root, AGENT)
        report = root.parent / "rusage.json"
        m, aws, imds = self._counted(lambda: probed(cmd, env=env, timeout=180, report=report))
        problem = self._check(manifest, root, payload, m)
        shutil.rmtree(root.parent, ignore_errors=True)
        return Boot("fetch", len(payload), m, aws, imds, ok=not problem, problem=problem)


def run_latency(
    stack: BenchStack,
    work: Path,
    *,
    sizes: list[int],
    runs: int,
    with_cli: bool,
    agent: Path | None = None,
) -> list[Series]:
    """Per size: one discarded warm-up boot per mode, then *runs* boots per mode, alternating
    which mode goes first (ABBA), so drift on the machine hits both alike."""
    bench = Bench(stack, work, agent)
    modes = MODES if with_cli else (AGENT,)
    out: list[Series] = []
    for size in sizes:
        payload = cloud_config(size, seed=size)
        series = {mode: Series(mode, size) for mode in modes}
        for mode in modes:
            bench.boot(payload, mode)  # warm-up: page cache, .pyc files; not counted
        for i in range(runs):
            order = modes if i % 2 == 0 else tuple(reversed(modes))
            for mode in order:
                series[mode].boots.append(bench.boot(payload, mode))
        out.extend(series[m] for m in modes)
    return out


def capa_fragments(payload: bytes) -> int:
    """How many fragments ``seal --format capa`` splits *payload* into (CAPA's 7000-byte
    slices of the gzip stream)."""
    return -(-len(gzip_deterministic(payload)) // CAPA_FRAGMENT_SIZE)


def payload_in(fragments: int, prefer: int = 20 * 1024, step: int = 1024) -> bytes:
    """A bench payload that CAPA seals into exactly *fragments* fragments (natively it is
    still one): *prefer* bytes if that does, else the smallest size in *step*s above it."""
    size = prefer
    while True:
        data = cloud_config(size, seed=size)
        n = capa_fragments(data)
        if n == fragments:
            return data
        if n > fragments:
            raise ValueError(f"no payload from {prefer} bytes up gives {fragments} fragment(s)")
        size += step


@dataclass
class PerFragment:
    """The same payload booted natively (one fragment) and CAPA-sealed (*fragments*), ABBA."""

    fragments: int
    native: Series
    capa: Series

    def per_extra_fragment(self, of: Callable[[Boot], float | None] = lambda b: b.work) -> float:
        """Seconds each fragment beyond the first adds, by the medians of *of* of each side's
        boots (by default the agent's own work after credentials, see ``Boot.work``)."""
        capa = statistics.median(v for b in self.capa.boots if (v := of(b)) is not None)
        native = statistics.median(v for b in self.native.boots if (v := of(b)) is not None)
        return (capa - native) / (self.fragments - 1)

    def summary(self) -> dict[str, Any]:
        return {
            "fragments": self.fragments,
            "native": self.native.summary(),
            "capa": self.capa.summary(),
            "per_extra_fragment_seconds": round(self.per_extra_fragment(), 4),
            "per_extra_fragment_seconds_by_wall": round(
                self.per_extra_fragment(lambda b: b.m.wall), 4
            ),
        }


def run_fragments(
    stack: BenchStack, work: Path, counts: list[int], runs: int, agent: Path | None = None
) -> list[PerFragment]:
    """Per fragment count: one payload, booted by the agent sealed natively and CAPA-sealed,
    one discarded warm-up each, then *runs* each, alternating which goes first."""
    bench = Bench(stack, work, agent)
    out = []
    for count in counts:
        payload = payload_in(count)
        pair = PerFragment(
            count, Series(AGENT, len(payload)), Series(f"{AGENT}-capa", len(payload))
        )
        formats = ((FORMAT_NATIVE, pair.native), (FORMAT_CAPA, pair.capa))
        for fmt, _ in formats:
            bench.boot(payload, AGENT, fmt)  # warm-up
        for i in range(runs):
            for fmt, series in formats if i % 2 == 0 else tuple(reversed(formats)):
                series.boots.append(bench.boot(payload, AGENT, fmt))
        out.append(pair)
    return out


# The agent's own libraries and nothing else: no manifest, no request, no file.
FLOOR_CODE = "import botocore.session, requests"


def run_floor(agent: Path, runs: int) -> Series:
    """The installed agent's interpreter (same wrapper, flags and extraction, through shiv's
    interpreter mode) importing botocore and requests and exiting: what any fetch pays first."""
    env = {"PATH": "/usr/bin:/bin", "SHIV_INTERPRETER": "1"}
    series = Series("floor", 0)
    for i in range(runs + 1):
        m = measured([str(agent), "-c", FLOOR_CODE], env=env, timeout=60)
        if i:  # the first is a warm-up
            problem = "" if m.returncode == 0 else f"exit {m.returncode}"
            series.boots.append(Boot("floor", 0, m, {}, 0, ok=not problem, problem=problem))
    return series


def run_footprint(
    stack: BenchStack, work: Path, *, size: int, runs: int, agent: Path | None = None
) -> Series:
    bench = Bench(stack, work, agent)
    payload = cloud_config(size, seed=size + 1)
    bench.fetch(payload)  # warm-up
    series = Series("fetch", size)
    for _ in range(runs):
        series.boots.append(bench.fetch(payload))
    return series
