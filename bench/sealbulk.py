"""Bulk seal: one controller process seals many machines' user data through the fault proxy
at the real CreateSecret quota, with the toolkit's own ``seal()`` and client settings.

Example::

    >>> result = run_bulk_seal(stack, machines=1000, workers=32)
    >>> result.ratio < 1.5
    True
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from bench.payload import cloud_config
from bench.stack import BenchStack, scaled_quotas
from sealboot.aws import aws_client
from sealboot.errors import SealbootError
from sealboot.seal import SealConfig, seal
from sealboot_agent.wire import Manifest


@dataclass
class BulkSealResult:
    machines: int
    workers: int
    scale: float
    quota: float  # CreateSecret TPS enforced
    fragments: int
    seconds: float
    bound: float
    calls: int
    throttled: int
    failures: list[str]
    orphans: int  # secrets in the account that no manifest names (a failed seal's leftovers)
    missing: int  # fragments a manifest names that are not in the account
    cpu_bench: float

    @property
    def ratio(self) -> float:
        return self.seconds / self.bound if self.bound else math.inf

    def as_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["ratio"] = round(self.ratio, 3)
        return data


def run_bulk_seal(
    stack: BenchStack,
    *,
    machines: int,
    workers: int,
    scale: float = 1.0,
    payload_size: int = 20 * 1024,
) -> BulkSealResult:
    payloads = [cloud_config(payload_size, seed=50_000 + i) for i in range(machines)]
    config = SealConfig(region=stack.region, endpoint_url=stack.proxy.url)
    before = set(stack.secret_names())
    # One client shared by every thread, as sealboot.aws.aws_client recommends for bulk sealing
    # (adaptive retries rate-limit all threads together against the quota).
    shared = aws_client(
        "secretsmanager", region=stack.region, endpoint_url=stack.proxy.url, workers=workers
    )

    def client() -> Any:
        return shared

    def one(i: int) -> Manifest | str:
        try:
            return seal(
                payloads[i],
                namespace="bench",
                cluster="bulk",
                machine=f"m-{i}",
                config=config,
                client=client(),
            )
        except SealbootError as exc:
            return f"m-{i}: {exc.message}"

    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        list(pool.map(lambda _: client(), range(workers * 4)))  # clients made before the clock
        stack.proxy.clear()
        quotas = scaled_quotas(scale)
        stack.proxy.faults.quota.update(quotas)
        cpu0 = time.process_time()
        t0 = time.monotonic()
        results = list(pool.map(one, range(machines)))
        seconds = time.monotonic() - t0
        cpu_bench = time.process_time() - cpu0
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)  # Ctrl-C: do not seal the rest
        raise
    pool.shutdown()
    calls = stack.proxy.calls["CreateSecret"]
    throttled = stack.proxy.injected["CreateSecret:throttle"]
    stack.proxy.clear()
    manifests = [r for r in results if isinstance(r, Manifest)]
    failures = [r for r in results if isinstance(r, str)]
    named = {n for m in manifests for n in m.fragments}
    present = set(stack.secret_names()) - before
    fragments = sum(m.count for m in manifests)
    return BulkSealResult(
        machines=machines,
        workers=workers,
        scale=scale,
        quota=quotas["CreateSecret"],
        fragments=fragments,
        seconds=seconds,
        bound=fragments / quotas["CreateSecret"],
        calls=calls,
        throttled=throttled,
        failures=failures,
        orphans=len(present - named),
        missing=len(named - present),
        cpu_bench=cpu_bench,
    )
