"""`make stack` (scripts/stack.py): the printed exports work, and Ctrl-C stops everything."""

from __future__ import annotations

import os
import queue
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import boto3

REPO = Path(__file__).resolve().parents[2]


def _read_exports(proc: subprocess.Popen[str], timeout: float = 60) -> dict[str, str]:
    """The ``export K=V`` lines the script prints, up to the line naming the last variable."""
    assert proc.stdout is not None
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        # A thread, not select(): the text wrapper buffers lines the pipe no longer shows.
        for line in proc.stdout or ():
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    env: dict[str, str] = {}
    end = time.monotonic() + timeout
    while "INSTANCE_ID" not in env:
        assert time.monotonic() < end, f"no export lines within {timeout} s: {env}"
        assert proc.poll() is None, f"stack.py exited {proc.returncode}"
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        if line.startswith("export "):
            key, _, value = shlex.split(line)[1].partition("=")
            env[key] = value
    return env


def _port_open(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((parts.hostname, parts.port)) == 0


def test_stack_prints_working_exports_and_stops_on_sigint(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "scripts/stack.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        exports = _read_exports(proc)
        assert set(exports) >= {
            "AWS_ENDPOINT_URL",
            "SEALBOOT_ENDPOINT_URL",
            "SEALBOOT_IMDS_ENDPOINT",
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "SEALBOOT_ROOT",
        }
        assert Path(exports["SEALBOOT_ROOT"]).is_dir()

        # The toolkit's side: Secrets Manager at the printed endpoint with the printed keys.
        sm = boto3.client(
            "secretsmanager",
            endpoint_url=exports["AWS_ENDPOINT_URL"],
            region_name=exports["AWS_REGION"],
            aws_access_key_id=exports["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=exports["AWS_SECRET_ACCESS_KEY"],
        )
        assert sm.list_secrets()["SecretList"] == []
        # The agent's side: an IMDSv2 token from the printed emulator.
        imds = exports["SEALBOOT_IMDS_ENDPOINT"]
        req = urllib.request.Request(
            imds + "/latest/api/token",
            method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200
            assert resp.read().strip()

        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        assert proc.stderr is not None
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            # SIGTERM first: a SIGKILL would leave its moto server child running.
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err
    assert "stopped" in err
    assert not _port_open(exports["AWS_ENDPOINT_URL"]), "moto server still listens"
    assert not _port_open(imds), "the IMDS emulator still listens"
    assert not Path(exports["SEALBOOT_ROOT"]).exists(), "the scratch directory was left behind"
