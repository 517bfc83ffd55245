"""SSM Parameter Store backend end to end, customer KMS keys, FIPS, and the insecure opt-out."""

from __future__ import annotations

import base64
import gzip
import uuid
from pathlib import Path

from tests.functional.conftest import (
    Instance,
    assert_no_secret,
    cloud_config,
    random_cloud_config,
    seal,
    sealboot,
)
from tests.stack.local import LocalStack


def parameter_names(stack: LocalStack) -> list[str]:
    names: list[str] = []
    for page in stack.client("ssm").get_paginator("describe_parameters").paginate():
        names.extend(p["Name"] for p in page["Parameters"])
    return sorted(names)


def test_ssm_seal_boot_fetch_delete(instance: Instance, tmp_path: Path) -> None:
    payload = random_cloud_config(12_000)  # base64 of ~9 KB gzip: three 4 KB parameters
    sealed = seal(instance.stack, tmp_path, payload, "--backend", "ssm")
    m = sealed.manifest
    assert m.backend == "ssm"
    assert m.count == 3
    assert all(n.startswith("/cluster.x-k8s.io/default/c1/worker-0/") for n in m.fragments)
    ssm = instance.stack.client("ssm")
    for name in m.fragments:
        p = ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]
        assert p["Type"] == "SecureString"
        assert len(p["Value"]) <= 4096
    assert parameter_names(instance.stack) == sorted(m.fragments)

    res = instance.boot(sealed.userdata_path)

    assert res.returncode == 0, instance.log
    assert instance.private.read_bytes() == payload
    assert parameter_names(instance.stack) == []
    assert_no_secret(instance.log, payload)


def test_ssm_advanced_tier_uses_8k_values(instance: Instance, tmp_path: Path) -> None:
    sealed = seal(
        instance.stack,
        tmp_path,
        random_cloud_config(12_000),
        "--backend",
        "ssm",
        "--tier",
        "advanced",
    )
    assert sealed.manifest.count == 2
    ssm = instance.stack.client("ssm")
    tiers = {
        ssm.get_parameter(Name=n)["Parameter"].get("Tier", "?") for n in sealed.manifest.fragments
    }
    values = [
        ssm.get_parameter(Name=n, WithDecryption=True)["Parameter"]["Value"]
        for n in sealed.manifest.fragments
    ]
    assert max(len(v) for v in values) > 4096
    assert tiers <= {"Advanced", "?"}  # moto may not echo the tier back
    assert instance.agent("fetch", "--manifest", str(sealed.manifest_path)).returncode == 0
    assert parameter_names(instance.stack) == []


def test_ssm_missing_fragment_stops_before_any_delete(instance: Instance, tmp_path: Path) -> None:
    sealed = seal(instance.stack, tmp_path, random_cloud_config(12_000), "--backend", "ssm")
    gone = sealed.manifest.fragments[1]
    instance.stack.client("ssm").delete_parameter(Name=gone)

    res = instance.agent("fetch", "--manifest", str(sealed.manifest_path))

    assert res.returncode == 4
    assert gone in res.stderr
    assert set(parameter_names(instance.stack)) == set(sealed.manifest.fragments) - {gone}


def test_ssm_corrupt_fragment_fails_the_digest(instance: Instance, tmp_path: Path) -> None:
    sealed = seal(instance.stack, tmp_path, random_cloud_config(12_000), "--backend", "ssm")
    name = sealed.manifest.fragments[0]
    ssm = instance.stack.client("ssm")
    value = ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
    flipped = ("B" if value[0] == "A" else "A") + value[1:]
    ssm.put_parameter(Name=name, Value=flipped, Type="SecureString", Overwrite=True)

    res = instance.agent("fetch", "--manifest", str(sealed.manifest_path))

    assert res.returncode == 6
    assert "sha256" in res.stderr
    assert set(parameter_names(instance.stack)) == set(sealed.manifest.fragments)


def test_ssm_fallback_with_the_aws_cli(instance: Instance, tmp_path: Path) -> None:
    payload = random_cloud_config(9_000)
    sealed = seal(instance.stack, tmp_path, payload, "--backend", "ssm")

    res = instance.boot(
        sealed.userdata_path,
        env=instance.env(PATH="/usr/bin:/bin", SEALBOOT_ROOT=str(instance.root)),
    )

    assert res.returncode == 0, instance.log
    assert "with the AWS CLI" in instance.log
    assert instance.private.read_bytes() == payload
    assert parameter_names(instance.stack) == []


def test_agent_reads_a_stock_capa_controllers_ssm_parameters(instance: Instance) -> None:
    payload = random_cloud_config(9_000)
    # What CAPA's SSM service writes: base64 of the gzip stream, 4000-character slices.
    text = base64.b64encode(gzip.compress(payload)).decode()
    prefix = f"/cluster.x-k8s.io/{uuid.uuid4()}"
    chunks = [text[i : i + 4000] for i in range(0, len(text), 4000)]
    ssm = instance.stack.client("ssm")
    for i, chunk in enumerate(chunks):
        ssm.put_parameter(Name=f"{prefix}/{i}", Value=chunk, Type="SecureString")

    res = instance.agent(
        "fetch",
        "--backend",
        "ssm",
        "--prefix",
        prefix,
        "--count",
        str(len(chunks)),
        "--endpoint-url",
        instance.stack.moto.url,
        "--region",
        instance.stack.region,
    )

    assert res.returncode == 0, res.stderr
    assert instance.output.read_bytes() == payload
    assert parameter_names(instance.stack) == []


def test_customer_kms_key_on_both_backends(instance: Instance, tmp_path: Path) -> None:
    key = instance.stack.client("kms").create_key(Description="sealboot test")["KeyMetadata"]
    payload = cloud_config()
    sm_sealed = seal(instance.stack, tmp_path, payload, "--kms-key-id", key["Arn"])
    name = sm_sealed.manifest.fragments[0]
    assert instance.stack.secrets().describe_secret(SecretId=name)["KmsKeyId"] == key["Arn"]
    (tmp_path / "ssm").mkdir()
    ssm_sealed = seal(
        instance.stack, tmp_path / "ssm", payload, "--backend", "ssm", "--kms-key-id", key["KeyId"]
    )
    meta = instance.stack.client("ssm").describe_parameters(
        ParameterFilters=[{"Key": "Name", "Values": list(ssm_sealed.manifest.fragments)}]
    )["Parameters"]
    assert {p.get("KeyId") for p in meta} == {key["KeyId"]}

    assert instance.agent("fetch", "--manifest", str(ssm_sealed.manifest_path)).returncode == 0


def test_endpoint_reaches_the_agent_and_the_fallback(instance: Instance, tmp_path: Path) -> None:
    proxy = instance.stack.proxy
    sealed = seal(instance.stack, tmp_path, cloud_config(), "--endpoint-url", proxy.url)
    assert sealed.manifest.endpoint_url == proxy.url

    assert instance.boot(sealed.userdata_path).returncode == 0
    agent_calls = proxy.calls
    assert agent_calls["BatchGetSecretValue"] == 1
    assert agent_calls["DeleteSecret"] == 1

    proxy.clear()
    (tmp_path / "fb").mkdir()
    root2 = tmp_path / "fb" / "root"
    root2.mkdir()
    other = Instance(root=root2, stack=instance.stack)
    sealed2 = seal(instance.stack, tmp_path / "fb", cloud_config(), "--endpoint-url", proxy.url)
    res = other.boot(
        sealed2.userdata_path, env=other.env(PATH="/usr/bin:/bin", SEALBOOT_ROOT=str(root2))
    )
    assert res.returncode == 0, other.log
    assert proxy.calls["GetSecretValue"] == 1
    assert proxy.calls["DeleteSecret"] == 1


def test_use_fips_is_carried_to_the_agent(instance: Instance, tmp_path: Path) -> None:
    sealed = seal(instance.stack, tmp_path, cloud_config(), "--use-fips")
    assert sealed.manifest.use_fips
    rendered = gzip.decompress(sealed.userdata_path.read_bytes())  # gzipped: it carries code
    assert b'"use_fips":true' in rendered
    import botocore.session

    from sealboot_agent.aws import make_client
    from sealboot_agent.imds import Deadline

    # Without an endpoint override, the agent's client resolves the FIPS endpoint.
    client = make_client(
        botocore.session.Session(),
        "secretsmanager",
        region="us-east-1",
        endpoint_url=None,
        deadline=Deadline(10),
        use_fips=True,
    )
    assert client.meta.endpoint_url == "https://secretsmanager-fips.us-east-1.amazonaws.com"
    # ...and the fallback reads the same manifest flag (AWS_USE_FIPS_ENDPOINT for the CLI).
    from sealboot.render import inspect

    assert inspect(sealed.userdata_path.read_bytes()).use_fips is True
    # With an explicit endpoint (the test stack) botocore uses it; the fetch still works.
    assert instance.agent("fetch", "--manifest", str(sealed.manifest_path)).returncode == 0


def test_insecure_passthrough_warns_loudly(aws: LocalStack, tmp_path: Path) -> None:
    src = tmp_path / "ud"
    src.write_bytes(b"#!/bin/sh\necho not secret\n")

    res = sealboot(
        aws,
        "seal",
        "--namespace",
        "n",
        "--cluster",
        "c",
        "--machine",
        "m",
        "--insecure-skip-secrets-manager",
        str(src),
    )

    assert res.returncode == 0
    assert res.stdout == src.read_bytes()
    assert b"NOT sealed" in res.stderr
    assert aws.secrets().list_secrets()["SecretList"] == []
