"""The bench's local stack: the project's LocalStack, plus one strict IMDS emulator per
simulated instance for the storm.

Every server listens on 127.0.0.1 only. By default the stack's HTTP servers (fault proxy, IMDS
emulators) reply with ``TCP_NODELAY`` set: without it, ``http.server`` sends a keep-alive
response's headers and body in two writes, and Nagle's algorithm holds the body until the
client's delayed ACK (40 ms on Linux loopback). Real IMDS and AWS endpoints have no such stall;
``--stock-stack`` keeps the servers exactly as ``tests/stack`` ships them, to show the cost.

Example::

    >>> with BenchStack(Path("/tmp/w")) as stack:
    ...     stack.proxy.faults.quota["DeleteSecret"] = 50.0
"""

from __future__ import annotations

import os
import socketserver
import sys
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/run.py` puts bench/ first, not the repo
    sys.path.insert(0, str(REPO))

import boto3  # noqa: E402
from botocore.config import Config  # noqa: E402
from tests.stack.imds import Identity, ImdsEmulator, role_credentials  # noqa: E402
from tests.stack.local import LocalStack  # noqa: E402

# The account's real default quotas (transactions per second), per the AWS facts in docs/DESIGN.md.
REAL_QUOTAS: dict[str, float] = {
    "CreateSecret": 50.0,
    "DeleteSecret": 50.0,
    "BatchGetSecretValue": 100.0,
    "GetSecretValue": 10_000.0,
    "GetParameters": 40.0,
    "DeleteParameters": 40.0,
    "PutParameter": 40.0,
}


def tune(server: socketserver.BaseServer, *, nodelay: bool, errors: Counter[str]) -> None:
    """Make *server* set TCP_NODELAY on every connection it accepts (when *nodelay*), and
    count, instead of printing, the tracebacks of connections the client dropped (an agent
    whose IMDS read timed out under load closes its socket; it retries)."""
    base: Any = server.RequestHandlerClass
    if nodelay and not getattr(base, "disable_nagle_algorithm", False):
        server.RequestHandlerClass = type(
            f"{base.__name__}NoDelay", (base,), {"disable_nagle_algorithm": True}
        )

    def handle_error(request: Any, client_address: Any) -> None:
        kind = sys.exc_info()[0]
        errors[kind.__name__ if kind else "?"] += 1

    server.handle_error = handle_error  # type: ignore[method-assign]


def scaled_quotas(scale: float) -> dict[str, float]:
    return {api: tps * scale for api, tps in REAL_QUOTAS.items()}


class BenchStack:
    """moto server (child process), the fault proxy and the main IMDS emulator, provisioned."""

    def __init__(self, work: Path, *, stock: bool = False) -> None:
        self.work = work
        self.stock = stock
        self.local = LocalStack(log_dir=work)
        self.server_errors: Counter[str] = Counter()
        for server in (self.local.proxy.server, self.local.imds.server):
            tune(server, nodelay=not stock, errors=self.server_errors)
        self.fleet: list[ImdsEmulator] = []
        self._fleet_lock = threading.Lock()
        self._running: list[str] = []
        self._direct: Any = None

    # -- the parts -----------------------------------------------------------------------
    @property
    def region(self) -> str:
        return self.local.region

    @property
    def proxy(self) -> Any:
        return self.local.proxy

    @property
    def imds(self) -> ImdsEmulator:
        return self.local.imds

    @property
    def moto_pid(self) -> int | None:
        proc = self.local.moto.proc
        return proc.pid if proc is not None else None

    def controller_env(self) -> dict[str, str]:
        """Environment for code that uses the default credential chain as the controller."""
        return {
            **self.local.admin_keys,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self, service: str, *, via_proxy: bool, pool: int = 10) -> Any:
        """A controller client, straight to moto or through the fault proxy."""
        keys = self.local.admin_keys
        return boto3.session.Session().client(
            service,
            region_name=self.region,
            endpoint_url=self.local.proxy.url if via_proxy else self.local.moto.url,
            aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
            config=Config(
                retries={"mode": "standard", "max_attempts": 8}, max_pool_connections=pool
            ),
        )

    def secret_names(self) -> list[str]:
        """Every secret in the account (straight from moto, so no quota applies)."""
        if self._direct is None:
            self._direct = self.client("secretsmanager", via_proxy=False)
        names: list[str] = []
        pages = self._direct.get_paginator("list_secrets")
        for page in pages.paginate(PaginationConfig={"PageSize": 100}):
            names.extend(s["Name"] for s in page["SecretList"])
        return names

    # -- a fleet of instances, each with its own IMDS and credentials ----------------------
    def instance_credentials(self, instance_id: str, sts: Any = None) -> dict[str, str]:
        """Assume the node role as *instance_id*, as EC2 does for an instance profile."""
        sts = sts or self.client("sts", via_proxy=False)
        role = self.local.identity.role_name
        arn = f"arn:aws:iam::{self.local.identity.account_id}:role/{role}"
        return role_credentials(
            sts.assume_role(RoleArn=arn, RoleSessionName=instance_id)["Credentials"]
        )

    def start_fleet(self, count: int) -> list[ImdsEmulator]:
        """Start *count* IMDS emulators, one per simulated instance, each with its own
        instance id, IP, MAC and assumed-role credentials."""
        self.stop_fleet()
        sts = self.client("sts", via_proxy=False, pool=8)

        def one(i: int) -> ImdsEmulator:
            iid = f"i-0b{i:015x}"
            ident = Identity(
                instance_id=iid,
                region=self.region,
                availability_zone=f"{self.region}a",
                role_name=self.local.identity.role_name,
                mac=f"06:00:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
                local_ipv4=f"10.1.{i >> 8 & 255}.{i & 255}",
                hostname=f"ip-10-1-{i >> 8 & 255}-{i & 255}.ec2.internal",
            )
            creds = self.instance_credentials(iid, sts)
            emu = ImdsEmulator(ident, _const(creds))
            tune(emu.server, nodelay=not self.stock, errors=self.server_errors)
            with self._fleet_lock:
                emu.start()
                self.fleet.append(emu)
            return emu

        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(one, range(count)))

    def stop_fleet(self) -> None:
        """Stop every fleet emulator; in parallel, as each stop waits up to half a second for
        its serve_forever loop to notice."""
        with self._fleet_lock:
            fleet, self.fleet = self.fleet, []
        if fleet:
            with ThreadPoolExecutor(max_workers=64) as pool:
                list(pool.map(lambda emu: emu.stop(), fleet))

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> BenchStack:
        # LocalStack.start, step by step, so that a failure part-way stops what did start.
        self._running.append("moto")  # MotoServer.stop is safe even if start fails
        self.local.moto.start()
        self.local.imds.start()
        self._running.append("imds")
        self.local.proxy.start()
        self._running.append("proxy")
        self.local.provision()
        return self

    def stop(self) -> None:
        self.stop_fleet()
        parts: dict[str, Any] = {
            "proxy": self.local.proxy,
            "imds": self.local.imds,
            "moto": self.local.moto,
        }
        while self._running:
            parts[self._running.pop()].stop()
        for server in (self.local.proxy.server, self.local.imds.server):
            server.server_close()

    def __enter__(self) -> BenchStack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _const(value: dict[str, str]) -> Callable[[], dict[str, str]]:
    return lambda: value
