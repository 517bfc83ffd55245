"""Fail-closed: every bad input stops before any delete, with a documented exit code."""

from __future__ import annotations

import gzip
import json
import subprocess
import uuid
from pathlib import Path

import pytest

from sealboot_agent.wire import Manifest
from tests.functional.conftest import (
    Instance,
    Sealed,
    assert_fragments_intact,
    assert_no_secret,
    cloud_config,
    incompressible,
    random_cloud_config,
    seal,
    sealboot,
    secret_names,
)
from tests.stack.local import LocalStack


def _fetch(instance: Instance, sealed: Sealed, *extra: str) -> tuple[int, str]:
    res = instance.agent("fetch", "--manifest", str(sealed.manifest_path), *extra)
    return res.returncode, res.stderr


def _assert_nothing_written(instance: Instance, sealed: Sealed) -> None:
    assert not instance.output.exists()
    assert_fragments_intact(instance.stack, sealed)
    assert_no_secret(instance.all_text(), sealed.payload)
    assert instance.state()["outcome"] == "failed"


def test_missing_fragment_stops_before_any_delete(instance: Instance, tmp_path: Path) -> None:
    sealed = seal(instance.stack, tmp_path, incompressible(150_000))
    gone = sealed.manifest.fragments[1]
    instance.stack.secrets().delete_secret(SecretId=gone, ForceDeleteWithoutRecovery=True)

    code, err = _fetch(instance, sealed)

    assert code == 4
    assert gone in err
    assert "does not exist" in err
    assert "what to do" in err
    assert not instance.output.exists()
    remaining = set(sealed.manifest.fragments) - {gone}
    assert remaining == set(secret_names(instance.stack))
    assert instance.state()["error"]["fragment"] == gone


def test_corrupt_fragment_fails_the_digest(instance: Instance, tmp_path: Path) -> None:
    sealed = seal(instance.stack, tmp_path, incompressible(100_000))
    name = sealed.manifest.fragments[0]
    sm = instance.stack.secrets()
    good = sm.get_secret_value(SecretId=name)["SecretBinary"]
    sm.put_secret_value(SecretId=name, SecretBinary=good[:-1] + bytes([good[-1] ^ 1]))

    code, err = _fetch(instance, sealed)

    assert code == 6
    assert "sha256" in err
    assert sealed.manifest.sha256 is not None
    assert sealed.manifest.sha256 in err
    _assert_nothing_written(instance, sealed)


def test_rerun_after_the_fault_clears_succeeds(instance: Instance, tmp_path: Path) -> None:
    sealed = seal(instance.stack, tmp_path, cloud_config())
    name = sealed.manifest.fragments[0]
    sm = instance.stack.secrets()
    good = sm.get_secret_value(SecretId=name)["SecretBinary"]
    sm.put_secret_value(SecretId=name, SecretBinary=b"\x1f\x8bgarbage")
    assert _fetch(instance, sealed)[0] == 6
    sm.put_secret_value(SecretId=name, SecretBinary=good)

    code, err = _fetch(instance, sealed)

    assert code == 0, err
    assert instance.output.read_bytes() == sealed.payload
    assert secret_names(instance.stack) == []


def test_denied_access_keeps_every_fragment(aws: LocalStack, tmp_path: Path) -> None:
    aws.reset(node_actions=["secretsmanager:DescribeSecret"])
    root = tmp_path / "root"
    root.mkdir()
    instance = Instance(root=root, stack=aws)
    sealed = seal(aws, tmp_path, cloud_config())
    aws.moto.enforce_iam(0)
    try:
        code, err = _fetch(instance, sealed)
    finally:
        aws.moto.enforce_iam(float("inf"))

    assert code == 5
    assert "denied" in err
    assert sealed.manifest.fragments[0] in err
    assert "GetSecretValue" in err  # the hint names the permission to grant
    _assert_nothing_written(instance, sealed)


def test_capa_node_policy_without_batch_get_falls_back(aws: LocalStack, tmp_path: Path) -> None:
    # CAPA's stock node policy: GetSecretValue and DeleteSecret, no BatchGetSecretValue.
    aws.reset(node_actions=["secretsmanager:GetSecretValue", "secretsmanager:DeleteSecret"])
    root = tmp_path / "root"
    root.mkdir()
    instance = Instance(root=root, stack=aws)
    sealed = seal(aws, tmp_path, incompressible(70_000))
    aws.moto.enforce_iam(0)
    try:
        code, err = _fetch(instance, sealed)
    finally:
        aws.moto.enforce_iam(float("inf"))

    assert code == 0, err
    assert "using GetSecretValue" in err
    assert instance.output.read_bytes() == sealed.payload
    assert secret_names(aws) == []


def test_payload_over_the_size_cap_is_refused(instance: Instance, tmp_path: Path) -> None:
    sealed = seal(instance.stack, tmp_path, cloud_config(50_000))

    code, err = _fetch(instance, sealed, "--max-size", "10000")

    assert code == 6
    assert "cap of 10000 bytes" in err
    _assert_nothing_written(instance, sealed)


def test_imds_down_is_a_clear_error(instance: Instance, tmp_path: Path) -> None:
    sealed = seal(instance.stack, tmp_path, cloud_config())
    env = instance.env(SEALBOOT_IMDS_ENDPOINT="http://127.0.0.1:9", SEALBOOT_DEADLINE="3")

    res = instance.agent("fetch", "--manifest", str(sealed.manifest_path), env=env)

    assert res.returncode == 3
    assert "IMDSv2" in res.stderr
    assert "instance profile" in res.stderr  # what to do
    _assert_nothing_written(instance, sealed)


def test_imds_rejects_requests_without_a_token(aws: LocalStack) -> None:
    import requests

    plain = requests.get(aws.imds.url + "/latest/meta-data/instance-id", timeout=5)
    forwarded = requests.put(
        aws.imds.url + "/latest/api/token",
        headers={"X-aws-ec2-metadata-token-ttl-seconds": "60", "X-Forwarded-For": "1.2.3.4"},
        timeout=5,
    )
    get_token = requests.get(aws.imds.url + "/latest/api/token", timeout=5)
    bad_ttl = requests.put(
        aws.imds.url + "/latest/api/token",
        headers={"X-aws-ec2-metadata-token-ttl-seconds": "0"},
        timeout=5,
    )

    assert plain.status_code == 401
    assert forwarded.status_code == 403
    assert get_token.status_code == 405
    assert bad_ttl.status_code == 400


def test_unreachable_endpoint_with_hostile_url_stays_data(
    instance: Instance, tmp_path: Path
) -> None:
    sealed = seal(instance.stack, tmp_path, cloud_config())
    canary = tmp_path / "pwned"
    hostile = (
        f"http://127.0.0.1:9/$(touch${{IFS}}{canary})`touch${{IFS}}{canary}`"
        f"';touch${{IFS}}{canary}'\"$(touch${{IFS}}{canary})\""
    )
    data = json.loads(sealed.manifest_path.read_text())
    data["endpoint_url"] = hostile
    manifest = Manifest.from_dict(data)
    mpath = tmp_path / "hostile.json"
    mpath.write_text(manifest.to_json())
    out = tmp_path / "hostile.mime"
    assert sealboot(instance.stack, "render", str(mpath), "-o", str(out)).returncode == 0

    res = instance.boot(
        out, env=instance.env(SEALBOOT_ROOT=str(instance.root), SEALBOOT_DEADLINE="4")
    )

    assert not canary.exists(), "a value in the manifest ran as code"
    assert res.returncode == 7, instance.log
    assert "no fragment was deleted" in instance.log
    assert_fragments_intact(instance.stack, sealed)


@pytest.mark.parametrize(
    ("machine", "needle"),
    [("$(reboot)", "$()"), ("a'b", "'"), ('a"b', '"'), ("a b", " "), ("a/b", "/"), ("", "empty")],
)
def test_hostile_names_are_refused_before_anything_is_created(
    aws: LocalStack, tmp_path: Path, machine: str, needle: str
) -> None:
    src = tmp_path / "ud"
    src.write_bytes(cloud_config())
    res = sealboot(
        aws,
        "seal",
        "--namespace",
        "default",
        "--cluster",
        "c1",
        "--machine",
        machine,
        "--region",
        aws.region,
        "--endpoint-url",
        aws.moto.url,
        str(src),
    )

    assert res.returncode == 2
    err = res.stderr.decode()
    assert "machine name" in err
    assert all(ch in err for ch in needle) or needle in err
    assert secret_names(aws) == []
    assert res.stdout == b""


def test_over_long_names_are_shortened_and_still_work(instance: Instance, tmp_path: Path) -> None:
    machine = "m" * 300
    sealed = seal(instance.stack, tmp_path, cloud_config(), machine=machine, cluster="c" * 70)
    name = sealed.manifest.fragments[0]
    assert len(name) <= 512
    assert machine not in name
    (tmp_path / "again").mkdir()
    again = seal(
        instance.stack, tmp_path / "again", cloud_config(), machine=machine, cluster="c" * 70
    )
    # Deterministic shortening: the same machine maps to the same prefix every time.
    assert name.rsplit("/", 1)[0] == again.manifest.fragments[0].rsplit("/", 1)[0]

    code, err = _fetch(instance, sealed)

    assert code == 0, err
    assert instance.output.read_bytes() == sealed.payload


def test_bad_manifest_is_a_usage_error(instance: Instance, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"v": 1, "backend": "secrets-manager", "fragments": ["a$b"]}')

    res = instance.agent("fetch", "--manifest", str(bad))

    assert res.returncode == 2
    assert "bad manifest" in res.stderr


def test_render_refuses_user_data_over_16k(aws: LocalStack, tmp_path: Path) -> None:
    # Independent random names do not compress, so not even gzip brings these under 16 KB.
    names = [
        f"aws.cluster.x-k8s.io/default/c1/m1/{uuid.uuid4().hex}{uuid.uuid4().hex}-0"
        for _ in range(800)
    ]
    manifest = Manifest(
        backend="secrets-manager", format="native", fragments=tuple(names), sha256="0" * 64
    )
    path = tmp_path / "big.json"
    path.write_text(manifest.to_json())

    res = sealboot(aws, "render", str(path))

    assert res.returncode == 3
    assert b"16384" in res.stderr
    assert res.stdout == b""


class TestCapaInterop:
    """Secrets in CAPA's format, written by us or by a stock CAPA controller."""

    def test_agent_reads_fragments_sealed_with_format_capa(
        self, instance: Instance, tmp_path: Path
    ) -> None:
        payload = random_cloud_config(20_000)
        sealed = seal(instance.stack, tmp_path, payload, "--format", "capa")
        assert sealed.manifest.count == 3  # 7000-byte fragments, as CAPA writes them
        for name in sealed.manifest.fragments:
            assert name.startswith("aws.cluster.x-k8s.io/")
            assert uuid.UUID(name.split("/", 1)[1].rsplit("-", 1)[0])

        res = instance.boot(sealed.userdata_path)

        assert res.returncode == 0, instance.log
        assert instance.private.read_bytes() == payload
        assert [p.read_bytes() for p in instance.cloud_config_parts()] == [payload]
        assert secret_names(instance.stack) == []

    def _capa_controller_writes(self, stack: LocalStack, payload: bytes) -> tuple[str, int]:
        """What CAPA's secretsmanager service does: gzip, 7000-byte SecretBinary chunks."""
        data = gzip.compress(payload)
        prefix = f"aws.cluster.x-k8s.io/{uuid.uuid4()}"
        chunks = [data[i : i + 7000] for i in range(0, len(data), 7000)]
        for i, chunk in enumerate(chunks):
            stack.secrets().create_secret(Name=f"{prefix}-{i}", SecretBinary=chunk)
        return prefix, len(chunks)

    def _fetch_capa(
        self, instance: Instance, prefix: str, count: int
    ) -> subprocess.CompletedProcess[str]:
        return instance.agent(
            "fetch",
            "--prefix",
            prefix,
            "--count",
            str(count),
            "--endpoint-url",
            instance.stack.moto.url,
            "--region",
            instance.stack.region,
        )

    def test_agent_reads_a_stock_capa_controllers_secrets(self, instance: Instance) -> None:
        payload = incompressible(15_000)
        prefix, count = self._capa_controller_writes(instance.stack, payload)

        res = self._fetch_capa(instance, prefix, count)

        assert res.returncode == 0, res.stderr
        assert "CAPA format carries no digest" in res.stderr
        assert instance.output.read_bytes() == payload
        assert secret_names(instance.stack) == []

    def test_agent_never_deletes_when_capa_reassembly_fails(self, instance: Instance) -> None:
        payload = incompressible(15_000)
        prefix, count = self._capa_controller_writes(instance.stack, payload)
        instance.stack.secrets().put_secret_value(
            SecretId=f"{prefix}-1", SecretBinary=b"\x00" * 7000
        )

        res = self._fetch_capa(instance, prefix, count)

        assert res.returncode == 6
        assert "gzip" in res.stderr
        assert not instance.output.exists()
        assert len(secret_names(instance.stack)) == count

    def test_missing_capa_fragment_is_named(self, instance: Instance) -> None:
        prefix, count = self._capa_controller_writes(instance.stack, incompressible(15_000))

        res = self._fetch_capa(instance, prefix, count + 1)

        assert res.returncode == 4
        assert f"{prefix}-{count}" in res.stderr
        assert len(secret_names(instance.stack)) == count
