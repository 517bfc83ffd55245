"""moto in server mode, as a child process reached over HTTP like real AWS.

Example::

    >>> with MotoServer() as moto:
    ...     boto3.client("secretsmanager", endpoint_url=moto.url, region_name="us-east-1")
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ADMIN_ENV = {
    # moto accepts any keys while IAM enforcement is off; these are the controller's.
    "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class MotoServer:
    """Start ``python -m moto.server`` on a free loopback port; stop it on exit."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, log: Path | None = None):
        self.host = host
        self.port = port or free_port(host)
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> MotoServer:
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(self.url + "/moto-api/", timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("moto server did not start in time")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def _post(self, path: str, body: bytes = b"") -> Any:
        req = urllib.request.Request(
            self.url + path, data=body, method="POST", headers={"Content-Type": "text/plain"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            text = resp.read()
        return json.loads(text) if text.strip().startswith(b"{") else text

    def reset(self) -> None:
        """Forget every resource (between tests)."""
        self._post("/moto-api/reset")

    def enforce_iam(self, after_requests: float = 0) -> None:
        """Turn on IAM policy enforcement after *after_requests* more requests (inf: off)."""
        self._post("/moto-api/reset-auth", str(after_requests).encode())

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
