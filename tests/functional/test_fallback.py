"""The boothook's AWS CLI fallback (real AWS CLI v2 from Debian) keeps the agent's rules."""

from __future__ import annotations

import email
import gzip
import subprocess
import time
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

import pytest

from tests.functional.conftest import (
    SECRET_MARKER,
    Instance,
    Sealed,
    assert_fragments_intact,
    assert_no_secret,
    cloud_config,
    seal,
    secret_names,
)

AWS = Path("/usr/bin/aws")


@pytest.fixture(autouse=True)
def _aws_cli_v2() -> None:
    version = subprocess.run([str(AWS), "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("aws-cli/2."), "make test installs Debian's awscli (v2)"


def _boot(instance: Instance, sealed: Sealed, **env: str) -> subprocess.CompletedProcess[str]:
    # No sealboot-agent on PATH: only the system's tools, as on a stock AMI.
    return instance.boot(
        sealed.userdata_path,
        env=instance.env(PATH="/usr/bin:/bin", SEALBOOT_ROOT=str(instance.root), **env),
    )


def _seal_via_proxy(instance: Instance, tmp_path: Path, payload: bytes) -> Sealed:
    # The manifest's endpoint is what the fallback uses, so seal through the fault proxy.
    return seal(instance.stack, tmp_path, payload, "--endpoint-url", instance.stack.proxy.url)


def test_fallback_fetches_verifies_places_and_deletes(instance: Instance, tmp_path: Path) -> None:
    payload = cloud_config(20_000)
    sealed = seal(instance.stack, tmp_path, payload)

    res = _boot(instance, sealed)

    assert res.returncode == 0, instance.log
    assert "fetching 1 fragment(s) with the AWS CLI" in instance.log
    assert [p.read_bytes() for p in instance.cloud_config_parts()] == [payload]
    assert instance.private.read_bytes() == payload
    assert secret_names(instance.stack) == []
    assert (instance.scripts / "~sealboot-cleanup").exists()
    assert_no_secret(instance.all_text().replace(payload, b""), payload)
    assert_no_secret(instance.log, payload)


def test_fallback_places_mime_parts(instance: Instance, tmp_path: Path) -> None:
    outer = MIMEMultipart()
    for subtype, name, body in [
        ("cloud-config", "c.yaml", "#cloud-config\nruncmd: [id]\n"),
        ("x-shellscript", "go.sh", "#!/bin/sh\necho " + SECRET_MARKER.decode() + "\n"),
        ("cloud-boothook", "hook.sh", "#cloud-boothook\n#!/bin/sh\ntouch hook-ran\n"),
    ]:
        part = MIMEText(body, subtype)
        part.add_header("Content-Disposition", "attachment", filename=name)
        outer.attach(part)
    sealed = seal(instance.stack, tmp_path, outer.as_bytes())

    res = _boot(instance, sealed)

    assert res.returncode == 0, instance.log
    assert len(instance.cloud_config_parts()) == 1
    assert (instance.scripts / "go.sh").read_text().startswith("#!/bin/sh")
    assert (instance.root / "hook-ran").exists()
    assert secret_names(instance.stack) == []


def test_fallback_second_boot_is_a_noop(instance: Instance, tmp_path: Path) -> None:
    sealed = seal(instance.stack, tmp_path, cloud_config())
    assert _boot(instance, sealed).returncode == 0
    hits = len(instance.stack.imds.hits)

    assert _boot(instance, sealed).returncode == 0
    assert "nothing to do" in instance.log.splitlines()[-1]
    assert len(instance.stack.imds.hits) == hits


def test_fallback_stops_on_a_missing_fragment(instance: Instance, tmp_path: Path) -> None:
    from tests.functional.conftest import incompressible

    payload = b"#cloud-config\n# " + incompressible(100_000).hex().encode() + b"\n"
    sealed = seal(instance.stack, tmp_path, payload)
    assert sealed.manifest.count >= 2
    gone = sealed.manifest.fragments[-1]
    instance.stack.secrets().delete_secret(SecretId=gone, ForceDeleteWithoutRecovery=True)

    res = _boot(instance, sealed)

    assert res.returncode == 4
    assert gone in instance.log
    assert "does not exist" in instance.log
    assert set(secret_names(instance.stack)) == set(sealed.manifest.fragments) - {gone}
    assert not instance.private.exists()
    assert (instance.scripts / "sealboot-failed").exists()


def test_fallback_verifies_the_digest(instance: Instance, tmp_path: Path) -> None:
    sealed = seal(instance.stack, tmp_path, cloud_config())
    name = sealed.manifest.fragments[0]
    sm = instance.stack.secrets()
    good = sm.get_secret_value(SecretId=name)["SecretBinary"]
    sm.put_secret_value(SecretId=name, SecretBinary=good[:-1] + bytes([good[-1] ^ 1]))

    res = _boot(instance, sealed)

    assert res.returncode == 6
    assert "sha256 of the reassembled fragments" in instance.log
    assert_fragments_intact(instance.stack, sealed)
    assert not instance.private.exists()
    assert instance.cloud_config_parts() == []


def test_fallback_denied(instance: Instance, tmp_path: Path) -> None:
    sealed = seal(instance.stack, tmp_path, cloud_config())
    instance.stack.reset(node_actions=["secretsmanager:DescribeSecret"])
    sealed = seal(instance.stack, tmp_path, cloud_config())
    instance.stack.moto.enforce_iam(0)
    try:
        res = _boot(instance, sealed)
    finally:
        instance.stack.moto.enforce_iam(float("inf"))

    assert res.returncode == 5
    assert "access denied" in instance.log
    assert_fragments_intact(instance.stack, sealed)


def test_fallback_retries_throttling(instance: Instance, tmp_path: Path) -> None:
    payload = cloud_config()
    sealed = _seal_via_proxy(instance, tmp_path, payload)
    instance.stack.proxy.faults.throttle_next["GetSecretValue"] = 3

    res = _boot(instance, sealed)

    assert res.returncode == 0, instance.log
    assert instance.stack.proxy.injected["GetSecretValue:throttle"] == 3
    assert instance.private.read_bytes() == payload
    assert secret_names(instance.stack) == []


def test_fallback_gives_up_at_the_deadline(instance: Instance, tmp_path: Path) -> None:
    sealed = _seal_via_proxy(instance, tmp_path, cloud_config())
    instance.stack.proxy.faults.throttle["GetSecretValue"] = 1.0

    started = time.monotonic()
    res = _boot(instance, sealed, SEALBOOT_DEADLINE="6")
    took = time.monotonic() - started

    assert res.returncode == 7
    assert "gave up after" in instance.log
    assert took < 6 + 5, took  # one CLI call may be in flight at the deadline
    assert_fragments_intact(instance.stack, sealed)


def test_fallback_refuses_unsupported_user_data(instance: Instance, tmp_path: Path) -> None:
    sealed = seal(instance.stack, tmp_path, b"#include\nhttps://example.invalid/x\n")

    res = _boot(instance, sealed)

    assert res.returncode == 11
    assert "nothing was deleted" in instance.log
    assert_fragments_intact(instance.stack, sealed)


def test_neither_agent_nor_cli_fails_loudly(instance: Instance, tmp_path: Path) -> None:
    sealed = seal(instance.stack, tmp_path, cloud_config())
    msg_hook = instance.root.parent / "hook.sh"

    part = next(
        p
        for p in email.message_from_bytes(gzip.decompress(sealed.userdata_path.read_bytes())).walk()
        if p.get_content_type() == "text/cloud-boothook"
    )
    body = part.get_payload(decode=True)
    assert isinstance(body, bytes)
    msg_hook.write_bytes(body.split(b"\n", 1)[1])
    # Hide the AWS CLI in a private mount namespace: /dev/null is not executable.
    script = 'mount --bind /dev/null /usr/bin/aws && exec bash "$0"'
    res = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(msg_hook)],
        env=instance.env(PATH="/usr/bin:/bin", SEALBOOT_ROOT=str(instance.root)),
        capture_output=True,
        text=True,
        check=False,
    )

    assert res.returncode == 69
    assert "neither sealboot-agent nor the AWS CLI is installed" in instance.log
    assert_fragments_intact(instance.stack, sealed)


def test_fallback_stops_at_the_deadline_when_aws_trickles(
    instance: Instance, tmp_path: Path
) -> None:
    sealed = _seal_via_proxy(instance, tmp_path, cloud_config())
    instance.stack.proxy.faults.trickle = 0.05  # ~20 s for one answer, a byte at a time

    started = time.monotonic()
    res = _boot(instance, sealed, SEALBOOT_DEADLINE="4")
    took = time.monotonic() - started

    assert res.returncode == 7, instance.log
    assert "before the deadline" in instance.log
    assert took < 4 + 4, took
    assert_fragments_intact(instance.stack, sealed)
