"""A fault-injecting HTTP proxy in front of moto: throttling, 5xx, latency, dropped connections,
answers that trickle in.

Example::

    >>> with FaultProxy(moto.url) as proxy:
    ...     proxy.faults.throttle["GetSecretValue"] = 1.0   # every call throttled
    ...     proxy.faults.quota["DeleteSecret"] = 50.0        # 50 TPS token bucket
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from tests.stack.imds import write_slowly
from tests.stack.serve import Background

# Headers http.client manages itself, or that must not be forwarded hop to hop. Host is kept:
# it is part of the SigV4 signature that moto checks when IAM enforcement is on.
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


@dataclass
class Faults:
    """What to get wrong, per API (the X-Amz-Target action, e.g. ``GetSecretValue``)."""

    throttle: dict[str, float] = field(default_factory=dict)  # API -> probability
    throttle_next: dict[str, int] = field(default_factory=dict)  # API -> next N calls
    quota: dict[str, float] = field(default_factory=dict)  # API -> transactions per second
    errors_5xx: int = 0  # the next N requests get a 5xx
    drop: int = 0  # the next N responses are cut off mid-body
    latency: float = 0.0  # seconds added before forwarding
    trickle: float = 0.0  # > 0: bodies are sent a byte at a time, this many seconds apart
    trickle_for: float = 20.0  # ... for at most this long, then the rest at once
    only: set[str] | None = None  # restrict 5xx/drop/trickle to these APIs (None: all)


@dataclass
class _Bucket:
    rate: float
    tokens: float
    stamp: float

    def take(self, now: float) -> bool:
        self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass
class _State:
    upstream: str
    faults: Faults = field(default_factory=Faults)
    calls: Counter[str] = field(default_factory=Counter)
    injected: Counter[str] = field(default_factory=Counter)
    buckets: dict[str, _Bucket] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _api(headers: Any) -> str:
    target = headers.get("X-Amz-Target", "")
    return str(target.rsplit(".", 1)[-1]) if target else "other"


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # http.server writes headers and body separately; without this, Nagle holds the body back
    # until the client's delayed ACK: ~40 ms on every reused keep-alive connection.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return

    def _json_error(self, status: int, kind: str, message: str) -> None:
        body = json.dumps({"__type": kind, "message": message}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("x-amzn-ErrorType", kind)
        self.send_header("x-amzn-RequestId", f"proxy-{random.getrandbits(48):012x}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _decide(self, api: str) -> str | None:
        st = self.server.state
        f = st.faults
        with st.lock:
            st.calls[api] += 1
            targeted = f.only is None or api in f.only
            if targeted and f.errors_5xx > 0:
                f.errors_5xx -= 1
                return "5xx"
            if api in f.quota:
                bucket = st.buckets.get(api)
                if bucket is None or bucket.rate != f.quota[api]:
                    rate = f.quota[api]
                    bucket = st.buckets[api] = _Bucket(rate, rate, time.monotonic())
                if not bucket.take(time.monotonic()):
                    return "throttle"
            if f.throttle_next.get(api, 0) > 0:
                f.throttle_next[api] -= 1
                return "throttle"
            if random.random() < f.throttle.get(api, 0.0):
                return "throttle"
            if targeted and f.drop > 0:
                f.drop -= 1
                return "drop"
            if targeted and f.trickle > 0:
                return "trickle"
        return None

    def _forward(self) -> None:
        st = self.server.state
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        api = _api(self.headers)
        if st.faults.latency:
            time.sleep(st.faults.latency)
        fault = self._decide(api)
        if fault is not None:
            with st.lock:
                st.injected[f"{api}:{fault}"] += 1
        if fault == "throttle":
            self._json_error(400, "ThrottlingException", "Rate exceeded")
            return
        if fault == "5xx":
            self._json_error(503, "ServiceUnavailable", "injected by the fault proxy")
            return
        up = urlsplit(st.upstream)
        conn = http.client.HTTPConnection(up.hostname or "127.0.0.1", up.port or 80, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        self.send_response(resp.status)
        for key, value in resp.getheaders():
            if key.lower() not in _HOP:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if fault == "drop":
            # Half a body, then the connection goes away: what a reset mid-response looks like.
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if fault == "trickle":
            if not write_slowly(self.wfile, data, st.faults.trickle, st.faults.trickle_for):
                self.close_connection = True
            return
        self.wfile.write(data)

    do_POST = _forward  # noqa: N815 - http.server's naming
    do_GET = _forward  # noqa: N815
    do_PUT = _forward  # noqa: N815
    do_DELETE = _forward  # noqa: N815


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    state: _State


class FaultProxy(Background):
    """Serve the proxy on a thread; ``calls`` and ``injected`` count what happened."""

    def __init__(self, upstream: str, host: str = "127.0.0.1", port: int = 0):
        server = _Server((host, port), _Handler)
        server.state = _State(upstream=upstream)
        super().__init__(server)
        self.server: _Server = server

    @property
    def faults(self) -> Faults:
        return self.server.state.faults

    @property
    def calls(self) -> Counter[str]:
        with self.server.state.lock:
            return Counter(self.server.state.calls)

    @property
    def injected(self) -> Counter[str]:
        with self.server.state.lock:
            return Counter(self.server.state.injected)

    def clear(self) -> None:
        with self.server.state.lock:
            self.server.state.faults = Faults()
            self.server.state.calls.clear()
            self.server.state.injected.clear()
            self.server.state.buckets.clear()
