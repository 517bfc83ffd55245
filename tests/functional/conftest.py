"""Fixtures that start the real local stack (moto server, IMDS emulator) and run the real CLIs."""

from __future__ import annotations

import email
import gzip
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sealboot_agent.wire import Manifest
from tests.stack.local import LocalStack

BIN = Path(sys.executable).parent
SECRET_MARKER = b"SEALBOOT-TEST-SECRET-7f3a9c"


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(log_dir=tmp_path_factory.mktemp("stack")) as st:
        yield st


@pytest.fixture
def aws(stack: LocalStack) -> LocalStack:
    """The stack with an empty account, IAM enforcement off, and fresh instance credentials."""
    stack.reset()
    return stack


@dataclass
class Sealed:
    manifest: Manifest
    manifest_path: Path
    userdata_path: Path
    payload: bytes


@dataclass
class Instance:
    """One simulated instance: a filesystem root plus the commands that run on it."""

    root: Path
    stack: LocalStack

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "PATH": f"{BIN}:/usr/sbin:/usr/bin:/sbin:/bin",
            "INSTANCE_ID": self.stack.identity.instance_id,
            "SEALBOOT_IMDS_ENDPOINT": self.stack.imds.url,
            "SEALBOOT_DEADLINE": "30",
            "HOME": str(self.root),
        }
        env.update(extra)
        return env

    def agent(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "sealboot-agent"), *args, "--root", str(self.root)]
            if args and args[0] == "fetch"
            else [str(BIN / "sealboot-agent"), *args],
            env=env or self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def boot(
        self, userdata: Path, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run the boothook part of *userdata* the way cloud-init does: bash, cwd /, no stdin."""
        data = userdata.read_bytes()
        if data[:2] == b"\x1f\x8b":  # cloud-init decompresses gzip user data itself
            data = gzip.decompress(data)
        msg = email.message_from_bytes(data)
        part = next(p for p in msg.walk() if p.get_content_type() == "text/cloud-boothook")
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        hook = self.root.parent / f"{self.root.name}-boothook.sh"
        hook.write_bytes(payload.split(b"\n", 1)[1])
        hook.chmod(0o700)
        return subprocess.run(
            [str(hook)],
            env=env or self.env(SEALBOOT_ROOT=str(self.root)),
            cwd="/",
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    @property
    def log(self) -> str:
        path = self.root / "var/log/cloud-init-output.log"
        return path.read_text() if path.exists() else ""

    @property
    def output(self) -> Path:
        """Where ``fetch`` (default --handoff file) writes the user data."""
        return self.root / "etc/secret-userdata.txt"

    @property
    def private(self) -> Path:
        """Where the boothook's ``--handoff cloud-init`` keeps its durable copy."""
        return self.root / "var/lib/sealboot/userdata"

    @property
    def scripts(self) -> Path:
        return self.root / "var/lib/cloud/instances" / self.stack.identity.instance_id / "scripts"

    def cloud_config_parts(self) -> list[Path]:
        return sorted((self.root / "etc/cloud/cloud.cfg.d").glob("99-sealboot-*.cfg"))

    def state(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.root / "var/lib/sealboot/state.json").read_text())
        return data

    def all_text(self) -> bytes:
        """Every file the agent may have logged to, except the user data output itself."""
        blobs = []
        for path in self.root.rglob("*"):
            if path.is_file() and path != self.output:
                blobs.append(path.read_bytes())
        return b"\n".join(blobs)


@pytest.fixture
def instance(aws: LocalStack, tmp_path: Path) -> Instance:
    root = tmp_path / "root"
    root.mkdir()
    return Instance(root=root, stack=aws)


def sealboot(
    stack: LocalStack, *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    env = {"PATH": os.environ.get("PATH", ""), **stack.admin_keys, "HOME": "/nonexistent"}
    return subprocess.run(
        [str(BIN / "sealboot"), *args],
        env=env,
        input=stdin,
        capture_output=True,
        timeout=120,
        check=False,
    )


def seal(
    stack: LocalStack,
    tmp_path: Path,
    payload: bytes,
    *extra: str,
    machine: str = "worker-0",
    cluster: str = "c1",
) -> Sealed:
    src = tmp_path / "userdata.in"
    src.write_bytes(payload)
    manifest_path = tmp_path / "manifest.json"
    out = tmp_path / "userdata.mime"
    res = sealboot(
        stack,
        "seal",
        "--namespace",
        "default",
        "--cluster",
        cluster,
        "--machine",
        machine,
        "--region",
        stack.region,
        "--endpoint-url",
        stack.moto.url,
        "--manifest-out",
        str(manifest_path),
        "-o",
        str(out),
        *extra,
        str(src),
    )
    assert res.returncode == 0, res.stderr.decode()
    return Sealed(Manifest.from_json(manifest_path.read_text()), manifest_path, out, payload)


def secret_names(stack: LocalStack) -> list[str]:
    names: list[str] = []
    for page in stack.secrets().get_paginator("list_secrets").paginate():
        names.extend(s["Name"] for s in page["SecretList"])
    return sorted(names)


def cloud_config(size: int = 2048) -> bytes:
    """A cloud-config that carries SECRET_MARKER and is about *size* bytes."""
    head = b"#cloud-config\nwrite_files:\n  - path: /etc/sealboot-test\n    content: |\n"
    body = b""
    n = 0
    while len(head) + len(body) < size:
        body += b"      " + SECRET_MARKER + b"-" + str(n).encode() + b"\n"
        n += 1
    return head + body


def incompressible(size: int) -> bytes:
    """Random bytes carrying SECRET_MARKER, so gzip cannot shrink them below *size*."""
    return SECRET_MARKER + os.urandom(size)


def random_cloud_config(size: int) -> bytes:
    """A cloud-config of *size* bytes that gzip shrinks only to about three quarters."""
    import base64

    blob = base64.b64encode(os.urandom(size * 3 // 4)).decode()
    return (
        b"#cloud-config\n# " + SECRET_MARKER + b"\nwrite_files:\n  - path: /etc/blob\n"
        b"    content: " + blob.encode() + b"\n"
    )


def assert_no_secret(blob: bytes | str, payload: bytes) -> None:
    data = blob.encode() if isinstance(blob, str) else blob
    assert SECRET_MARKER not in data
    # Any 32-byte window of the payload would do; check a few spread over it.
    for start in range(0, max(1, len(payload) - 32), max(1, len(payload) // 7)):
        assert payload[start : start + 32] not in data


def assert_fragments_intact(stack: LocalStack, sealed: Sealed) -> None:
    assert set(sealed.manifest.fragments) <= set(secret_names(stack))


def fragments(sealed: Sealed) -> Sequence[str]:
    return sealed.manifest.fragments
