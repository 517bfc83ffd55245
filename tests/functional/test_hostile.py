"""Hostile input through the real CLIs: error text, part headers, resumed runs (moto + IMDS)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.functional.conftest import (
    BIN,
    Instance,
    assert_fragments_intact,
    seal,
    sealboot,
)

# What a hostile endpoint says back: control characters, quotes and command substitutions.
HOSTILE = "\x01\x1b[2J'$(touch CANARY1)'\n`touch CANARY2`; touch CANARY3 #\\'\""
SECRET = "S3CR3T-part-header-0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6071"


class _Hostile(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps({"__type": "HostileError", "message": HOSTILE}).encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def hostile_endpoint() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _rerender(instance: Instance, manifest: Path, tmp_path: Path, **changes: str) -> Path:
    data = json.loads(manifest.read_text())
    data.update(changes)
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(data))
    out = tmp_path / "edited.userdata"
    res = sealboot(instance.stack, "render", "-o", str(out), str(edited))
    assert res.returncode == 0, res.stderr
    return out


@pytest.mark.parametrize("shell", ["dash", "bash"])
def test_fallback_failure_script_keeps_hostile_error_text_inert(
    shell: str, instance: Instance, tmp_path: Path, hostile_endpoint: str
) -> None:
    sealed = seal(instance.stack, tmp_path, b"#cloud-config\nruncmd: [id]\n")
    userdata = _rerender(instance, sealed.manifest_path, tmp_path, endpoint_url=hostile_endpoint)

    res = instance.boot(
        userdata, env=instance.env(PATH="/usr/bin:/bin", SEALBOOT_ROOT=str(instance.root))
    )

    assert res.returncode == 7, instance.log
    assert "\x1b" not in instance.log
    assert "\x01" not in instance.log
    failed = instance.scripts / "sealboot-failed"
    run = subprocess.run(
        [shell, str(failed)], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert run.returncode == 1
    assert "sealboot:" in run.stderr
    assert "HostileError" in run.stderr
    assert not list(tmp_path.glob("CANARY*")), "the failure script ran text from the endpoint"
    assert_fragments_intact(instance.stack, sealed)


def _mime_with_secret_headers(subtype: str) -> bytes:
    outer = MIMEMultipart()
    part = MIMEText("#!/bin/sh\necho fine\n", subtype)
    # RFC 2231 filename with an encoded newline: once forged a whole log line.
    part.add_header(
        "Content-Disposition", "attachment", filename=("utf-8", "", f"{SECRET}\n2026 INFO: x")
    )
    outer.attach(part)
    return outer.as_bytes()


@pytest.mark.parametrize(("subtype", "code"), [("x-shellscript", 0), (f"x-{SECRET}", 11)])
def test_part_names_and_types_never_reach_logs_state_or_scripts(
    subtype: str, code: int, instance: Instance, tmp_path: Path
) -> None:
    sealed = seal(instance.stack, tmp_path, _mime_with_secret_headers(subtype))

    res = instance.boot(sealed.userdata_path)

    assert res.returncode == code, instance.log
    seen = instance.log + res.stdout + res.stderr + json.dumps(instance.state())
    failed = instance.scripts / "sealboot-failed"
    if failed.exists():
        seen += failed.read_text()
    cleanup = instance.scripts / "~sealboot-cleanup"
    assert SECRET not in seen
    assert "2026 INFO: x" not in seen
    if code == 0:
        assert cleanup.exists()


def test_resume_after_another_hand_off_refuses_before_any_delete(
    instance: Instance, tmp_path: Path
) -> None:
    # The datasource's hand-off (stdout) accepts jinja; the boothook's (cloud-init) cannot.
    sealed = seal(instance.stack, tmp_path, b"## template: jinja\n#cloud-config\nruncmd: [id]\n")
    paused = instance.root / "var/lib/sealboot/paused"
    proc = subprocess.Popen(
        [
            str(BIN / "sealboot-agent"),
            "fetch",
            "--handoff",
            "stdout",
            "--root",
            str(instance.root),
            "--manifest",
            str(sealed.manifest_path),
        ],
        env=instance.env(SEALBOOT_TEST_PAUSE_AT="written"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        end = time.monotonic() + 30
        while not paused.exists() and time.monotonic() < end and proc.poll() is None:
            time.sleep(0.02)
        assert paused.read_text() == "written"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    paused.unlink()

    res = instance.boot(sealed.userdata_path)

    assert res.returncode == 11, instance.log
    assert "resuming" in instance.log
    assert_fragments_intact(instance.stack, sealed)
