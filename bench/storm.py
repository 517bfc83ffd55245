"""Boot storm: N simulated instances run the agent at once against the fault proxy's quotas.

Each instance is one ``run_fetch`` (the agent's own code path, with its default botocore
client) on its own thread, with its own filesystem root, its own IMDS emulator (instance id,
MAC, IP) and its own assumed-role credentials read from that emulator. See dilate.py for why
the storm runs at a stated fraction of the real quotas, time-stretched to match.

Example::

    >>> result = run_storm(stack, work, instances=200, scale=0.1)
    >>> result.failures
    []
"""

from __future__ import annotations

import logging
import math
import os
import resource
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.payload import cloud_config
from bench.sim import Dilation, dilated_botocore, set_quotas, shared_botocore_models
from bench.stack import BenchStack, scaled_quotas
from sealboot.seal import SealConfig, seal
from sealboot_agent.config import AgentConfig
from sealboot_agent.errors import AgentError
from sealboot_agent.handoff import HANDOFFS
from sealboot_agent.run import Deps, run_fetch
from sealboot_agent.wire import BATCH_GET_MAX_IDS, Manifest

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class StormResult:
    instances: int
    scale: float  # quotas enforced = real quotas x scale; agent time runs 1/scale slower
    quotas: dict[str, float]
    payload_bytes: int
    fragments_per_instance: int
    t_userdata: float  # seconds until the last instance had its user data written (measured)
    t_done: float  # seconds until the last agent finished, fragments deleted (measured)
    bound_userdata: float  # quota-bound minimum for t_userdata at the enforced quotas
    bound_done: float  # quota-bound minimum for t_done (the slowest API: DeleteSecret)
    calls: dict[str, int]
    throttled: dict[str, int]
    failures: list[str]
    lost: int  # instances without their exact user data on disk
    leftover: int  # fragments still in Secrets Manager afterwards
    cpu_bench: float  # CPU seconds of this process (agents, proxy, IMDS) during the storm
    cpu_moto: float  # CPU seconds of the moto server during the storm
    setup_seconds: float
    p50_done: float
    peak_rss_mb: float
    agent_seconds: list[float] = field(default_factory=list, repr=False)
    timeline: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.t_done / self.bound_done if self.bound_done else math.inf

    def as_json(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "agent_seconds"}
        data["ratio"] = round(self.ratio, 3)
        data["real_equivalent"] = {
            "t_userdata": round(self.t_userdata * self.scale, 3),
            "t_done": round(self.t_done * self.scale, 3),
            "bound_done": round(self.bound_done * self.scale, 3),
        }
        return data


def _proc_cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


def seal_many(
    stack: BenchStack, payloads: Sequence[bytes], *, prefix: str, workers: int = 8
) -> list[Manifest]:
    """Seal one payload per machine straight into moto (set-up, so no quota applies), with
    manifests that point the agents at the fault proxy."""
    client = stack.client("secretsmanager", via_proxy=False, pool=workers)
    config = SealConfig(region=stack.region, endpoint_url=stack.proxy.url)

    def one(i: int) -> Manifest:
        return seal(
            payloads[i],
            namespace="bench",
            cluster="storm",
            machine=f"{prefix}-{i}",
            config=config,
            client=client,
        )

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, range(len(payloads))))


def run_storm(
    stack: BenchStack,
    work: Path,
    *,
    instances: int,
    scale: float,
    payload_size: int = 20 * 1024,
    deadline: float = 300.0,
) -> StormResult:
    setup_started = time.monotonic()
    payloads = [cloud_config(payload_size, seed=10_000 + i) for i in range(instances)]
    manifests = seal_many(stack, payloads, prefix=f"s{scale:g}")
    fleet = stack.start_fleet(instances)
    handoff = HANDOFFS["cloud-init"]
    configs: list[AgentConfig] = []
    for i, (manifest, emu) in enumerate(zip(manifests, fleet)):
        root = work / f"storm-{scale:g}" / f"{i:04d}"
        root.mkdir(parents=True)
        configs.append(
            AgentConfig(
                manifest=manifest,
                root=root,
                output=handoff.default_output,
                handoff="cloud-init",
                imds_endpoint=emu.url,
                deadline=deadline,
                cloud_init_instance_id=emu.identity.instance_id,
                log_file=None,
            )
        )
    stack.proxy.clear()
    quotas = scaled_quotas(scale)
    dilation = Dilation(scale)
    setup_seconds = time.monotonic() - setup_started

    go = threading.Event()
    done_at: list[float] = [math.nan] * instances
    outcome: list[str | None] = [None] * instances
    written_wall: list[float] = [math.nan] * instances
    phases: list[dict[str, float]] = [{} for _ in range(instances)]

    def agent(i: int) -> None:
        go.wait()
        try:
            state = run_fetch(configs[i], Deps(clock=dilation.clock, sleep=dilation.sleep)).state
        except AgentError as exc:
            outcome[i] = f"{configs[i].cloud_init_instance_id}: exit {exc.exit_code}: {exc}"
        except Exception as exc:  # noqa: BLE001 - a bug in the agent is a failure to report
            outcome[i] = f"{configs[i].cloud_init_instance_id}: {type(exc).__name__}: {exc}"
        else:
            written_wall[i] = state.times.get("written", math.nan)
            phases[i] = dict(state.times)
            if state.left_behind:
                outcome[i] = f"{state.instance_id}: left {len(state.left_behind)} fragment(s)"
            else:
                outcome[i] = "ok"
        finally:
            done_at[i] = time.monotonic()

    threads = [
        threading.Thread(target=agent, args=(i,), daemon=True, name=f"agent-{i}")
        for i in range(instances)
    ]
    agent_log = logging.getLogger("sealboot_agent")
    old_level = agent_log.level
    agent_log.setLevel(logging.ERROR)  # N agents' INFO lines would drown the table
    try:
        for thread in threads:
            thread.start()
        moto_cpu0 = _proc_cpu(stack.moto_pid)
        with dilated_botocore(dilation), shared_botocore_models():
            _warm_models(stack)
            # The buckets start full with one real second's worth of tokens, as at scale 1.
            set_quotas(stack.proxy, quotas, burst_seconds=1 / scale)
            cpu0 = time.process_time()
            wall0 = time.time()
            t0 = time.monotonic()
            go.set()
            for thread in threads:
                while thread.is_alive():  # short joins keep Ctrl-C responsive
                    thread.join(0.5)
            cpu_bench = time.process_time() - cpu0
    finally:
        agent_log.setLevel(old_level)
    cpu_moto = _proc_cpu(stack.moto_pid) - moto_cpu0
    calls = dict(stack.proxy.calls)
    throttled = {k.split(":")[0]: v for k, v in stack.proxy.injected.items()}
    stack.proxy.clear()
    stack.stop_fleet()

    failures = [o or "did not finish" for o in outcome if o != "ok"]
    lost = 0
    for cfg, payload in zip(configs, payloads):
        try:
            if cfg.path(cfg.output).read_bytes() != payload:
                lost += 1
        except OSError:
            lost += 1
    wanted = {name for m in manifests for name in m.fragments}
    leftover = len(wanted.intersection(stack.secret_names()))
    per_instance = manifests[0].count
    batches = math.ceil(per_instance / BATCH_GET_MAX_IDS)
    bound_userdata = instances * batches / quotas["BatchGetSecretValue"]
    bound_done = max(bound_userdata, instances * per_instance / quotas["DeleteSecret"])
    finished = sorted(t - t0 for t in done_at)
    timeline = {
        phase: _quantiles([p[phase] - wall0 for p in phases if phase in p])
        for phase in ("credentials", "fetched", "written", "deleted", "done")
    }
    return StormResult(
        instances=instances,
        scale=scale,
        quotas={k: quotas[k] for k in ("BatchGetSecretValue", "DeleteSecret", "GetSecretValue")},
        payload_bytes=payload_size,
        fragments_per_instance=per_instance,
        t_userdata=max(w - wall0 for w in written_wall) if lost == 0 else math.nan,
        t_done=finished[-1],
        bound_userdata=bound_userdata,
        bound_done=bound_done,
        calls=calls,
        throttled=throttled,
        failures=failures,
        lost=lost,
        leftover=leftover,
        cpu_bench=cpu_bench,
        cpu_moto=cpu_moto,
        setup_seconds=setup_seconds,
        p50_done=finished[len(finished) // 2],
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        agent_seconds=finished,
        timeline=timeline,
    )


def _warm_models(stack: BenchStack) -> None:
    """Parse the models once into the shared loader before the clock starts."""
    import botocore.session

    session: Any = botocore.session.Session()
    session.create_client(
        "secretsmanager",
        region_name=stack.region,
        endpoint_url=stack.proxy.url,
        aws_access_key_id="warm",
        aws_secret_access_key="warm",  # noqa: S106 - never sent
    )


def _quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    values = sorted(values)

    def pick(q: float) -> float:
        return round(values[min(len(values) - 1, int(q * len(values)))], 3)

    return {"p10": pick(0.1), "p50": pick(0.5), "p90": pick(0.9), "max": round(values[-1], 3)}
