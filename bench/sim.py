"""What the storm changes so that one 2-core box can stand in for a fleet, and nothing else.

1. **Time dilation.** The storm runs at ``scale`` times the real quotas, and every clock,
   sleep and deadline of the agents (their ``Deps`` clock and sleep, and the sleep botocore
   takes between its own retry attempts) runs ``1/scale`` times slower; the proxy's token
   buckets keep a burst of one *real* second. The dynamics are those of the real quotas,
   stretched: measured seconds x scale are the real-quota equivalent.
2. **Shared parsed models.** Every agent's botocore session gets one process-wide data loader,
   so the JSON service models and endpoints are parsed once, not once per simulated
   instance. On a real fleet each instance parses them on its own CPU (that cost is in the
   boot-path latency rows); in one process it would be pure contention between instances
   that do not share a CPU in reality.

Why: N agents in one process on a 2-core machine cost more CPU than the real quotas leave
time for (200 deletes at 50 TPS take 4 s), so at real speed the storm would measure this
box's CPU, not how the agents behave under throttling.

Example::

    >>> dilation = Dilation(0.1)
    >>> dilation.sleep(1.0)   # sleeps 10 s of wall time: one "real" second
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any


class Dilation:
    """A clock and a sleep running at *scale* of wall time (scale 1: no dilation)."""

    def __init__(self, scale: float) -> None:
        if not 0 < scale <= 1:
            raise ValueError("scale must be in (0, 1]")
        self.scale = scale

    def clock(self) -> float:
        return time.monotonic() * self.scale

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds) / self.scale)


class _TimeShim(ModuleType):
    """``time`` with a dilated ``sleep``, for modules that call ``time.sleep`` directly."""

    def __init__(self, dilation: Dilation) -> None:
        super().__init__("time")
        self._dilation = dilation

    def sleep(self, seconds: float) -> None:
        self._dilation.sleep(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@contextlib.contextmanager
def dilated_botocore(dilation: Dilation) -> Iterator[None]:
    """Dilate the sleep botocore takes between its own retry attempts (``botocore.endpoint``
    calls ``time.sleep``). Process-wide: use it only while nothing but the simulated agents
    talks to AWS."""
    import botocore.endpoint

    if dilation.scale == 1:
        yield
        return
    saved = botocore.endpoint.time
    botocore.endpoint.time = _TimeShim(dilation)  # type: ignore[assignment,unused-ignore]
    try:
        yield
    finally:
        botocore.endpoint.time = saved


@contextlib.contextmanager
def shared_botocore_models() -> Iterator[None]:
    """Give every new botocore session one process-wide data loader (and so one cache of
    parsed models) for the duration."""
    import botocore.loaders
    import botocore.session

    saved = botocore.session.create_loader
    loaders: dict[Any, Any] = {}
    lock = threading.Lock()

    def create_loader(search_path_string: Any = None) -> Any:
        with lock:
            if search_path_string not in loaders:
                loaders[search_path_string] = saved(search_path_string)
            return loaders[search_path_string]

    botocore.session.create_loader = create_loader  # type: ignore[assignment,unused-ignore]
    try:
        yield
    finally:
        botocore.session.create_loader = saved


@dataclass
class BurstBucket:
    """A token bucket like the fault proxy's, but whose capacity (burst) is set on its own."""

    rate: float
    tokens: float
    stamp: float
    capacity: float

    def take(self, now: float) -> bool:
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def set_quotas(proxy: Any, quotas: dict[str, float], burst_seconds: float = 1.0) -> bool:
    """Enforce *quotas* (TPS) on *proxy* with a burst of *burst_seconds* x rate tokens, full
    at the start. Returns False when the proxy's buckets could not be replaced (its internals
    changed), in which case the proxy's own buckets (burst: one second at the enforced rate)
    apply."""
    proxy.faults.quota.update(quotas)
    state = getattr(proxy.server, "state", None)
    buckets = getattr(state, "buckets", None)
    if not isinstance(buckets, dict) or burst_seconds == 1.0:
        return burst_seconds == 1.0
    now = time.monotonic()
    with state.lock:  # type: ignore[union-attr]
        for api, rate in quotas.items():
            burst = rate * burst_seconds
            buckets[api] = BurstBucket(rate=rate, tokens=burst, stamp=now, capacity=burst)
    return True
