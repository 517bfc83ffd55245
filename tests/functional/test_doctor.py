"""doctor under the node policy's own grants: the backend's API, FIPS endpoints, no secret read."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sealboot.policy import NODE_ACTIONS, NODE_UNSCOPED_ACTIONS
from tests.functional.conftest import (
    Instance,
    assert_no_secret,
    incompressible,
    random_cloud_config,
    seal,
    secret_names,
)
from tests.stack.local import LocalStack


def node_actions(backend: str) -> list[str]:
    """Exactly what 'sealboot policy --role node' grants for *backend* (nothing to describe)."""
    return [*NODE_ACTIONS[backend], *NODE_UNSCOPED_ACTIONS[backend]]


@contextmanager
def enforced(stack: LocalStack) -> Iterator[None]:
    stack.moto.enforce_iam(0)
    try:
        yield
    finally:
        stack.moto.enforce_iam(float("inf"))


def summary_line(stdout: str) -> str:
    return stdout.splitlines()[-1]


def test_ssm_fragments_are_checked_with_get_parameters_only(
    instance: Instance, tmp_path: Path
) -> None:
    stack = instance.stack
    stack.reset(node_actions=node_actions("ssm"))
    sealed = seal(stack, tmp_path, random_cloud_config(12_000), "--backend", "ssm")
    assert sealed.manifest.count > 1
    stack.proxy.clear()

    with enforced(stack):
        res = instance.agent(
            "-v",
            "doctor",
            "--manifest",
            str(sealed.manifest_path),
            "--endpoint-url",
            stack.proxy.url,
        )

    assert res.returncode == 0, res.stdout + res.stderr
    for name in sealed.manifest.fragments:
        assert f"[ ok ] fragment: {name}: exists (SecureString, not decrypted)" in res.stdout
    assert re.fullmatch(r"\d+ passed, \d+ warnings?, 0 failed, 0 skipped", summary_line(res.stdout))
    # Only the call the node policy grants; nothing of Secrets Manager, nothing denied.
    assert dict(stack.proxy.calls) == {"GetParameters": 1}
    assert "request id" in res.stderr  # -v before the command
    assert_no_secret(res.stdout + res.stderr, sealed.payload)
    names = [
        p["Name"] for p in stack.client("ssm").describe_parameters(MaxResults=50)["Parameters"]
    ]
    assert set(names) == set(sealed.manifest.fragments)


def test_secrets_manager_fragments_are_skipped_once_when_describe_is_not_granted(
    instance: Instance, tmp_path: Path
) -> None:
    stack = instance.stack
    stack.reset(node_actions=node_actions("secrets-manager"))
    sealed = seal(stack, tmp_path, incompressible(70_000))
    count = sealed.manifest.count
    assert count > 1
    stack.proxy.clear()

    with enforced(stack):
        res = instance.agent(
            "doctor", "--manifest", str(sealed.manifest_path), "--endpoint-url", stack.proxy.url
        )

    assert res.returncode == 0, res.stdout + res.stderr
    (skip,) = [line for line in res.stdout.splitlines() if line.startswith("[SKIP]")]
    assert skip.startswith(f"[SKIP] fragments: {count} not checked: DescribeSecret of ")
    assert "secretsmanager:DescribeSecret" in skip  # why, and what to grant to check
    assert "[WARN] fragment" not in res.stdout
    assert re.fullmatch(r"\d+ passed, \d+ warnings?, 0 failed, 1 skipped", summary_line(res.stdout))
    # One denied call, not one per fragment; no value read.
    assert dict(stack.proxy.calls) == {"DescribeSecret": 1}
    assert set(secret_names(stack)) == set(sealed.manifest.fragments)


def test_the_manifests_fips_setting_picks_the_fips_endpoint(
    instance: Instance, tmp_path: Path
) -> None:
    sealed = seal(instance.stack, tmp_path, incompressible(1000), "--use-fips")
    data = json.loads(sealed.manifest_path.read_text())
    del data["endpoint_url"]  # so botocore resolves the endpoint itself
    manifest = tmp_path / "fips.json"
    manifest.write_text(json.dumps(data))
    # No token, so no credentials: doctor makes no AWS call, it only resolves and connects.
    instance.stack.imds.faults.refuse_token = True

    res = instance.agent("doctor", "--manifest", str(manifest))

    (line,) = [line for line in res.stdout.splitlines() if "] endpoint:" in line]
    assert "https://secretsmanager-fips.us-east-1.amazonaws.com" in line
    assert "[SKIP] fragments: needs the instance-profile credentials" in res.stdout
