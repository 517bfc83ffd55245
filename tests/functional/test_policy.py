"""Generated policies, proven against moto server with IAM enforcement on.

moto server evaluates Secrets Manager and SSM requests against resource "*" (those services
define no resource for its authorizer), so a resource-scoped Allow is denied there. So:

- actions are proven by enforcement: the generated policy with every Resource rewritten to "*"
  (and nothing else changed) is put on the real role or user, and the real CLIs, the real
  agent and raw API calls are allowed or denied;
- resource scoping is proven with moto's own policy evaluator on the real ARNs that moto
  gave the sealed fragments: cluster A's are permitted, cluster B's are not.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto.iam.access_control import IAMPolicy, PermissionResult

from sealboot import policy as pol
from sealboot.sweep import sweep
from sealboot.tag_instance import tag_instance
from sealboot_agent.wire import Manifest
from tests.functional.conftest import BIN, Instance, Sealed, cloud_config, seal
from tests.stack.local import LocalStack

NS = "default"
A, B = "alpha", "alpha-2"  # B's name starts with A's: the scoping must not be a bare prefix


def _star(doc: dict[str, Any]) -> dict[str, Any]:
    """The policy with every Resource rewritten to "*": what moto server can enforce."""
    out = copy.deepcopy(doc)
    for stmt in out["Statement"]:
        stmt["Resource"] = "*"
    return out


@contextmanager
def _enforced(stack: LocalStack) -> Iterator[None]:
    stack.moto.enforce_iam(0)
    try:
        yield
    finally:
        stack.moto.enforce_iam(float("inf"))


def _node_keys(stack: LocalStack, doc: dict[str, Any]) -> dict[str, str]:
    stack.client("iam").put_role_policy(
        RoleName=stack.identity.role_name,
        PolicyName="sealboot-node",  # replaces the stack's default node policy
        PolicyDocument=json.dumps(_star(doc)),
    )
    creds = stack.node_credentials
    return {
        "AWS_ACCESS_KEY_ID": creds["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": creds["SecretAccessKey"],
        "AWS_SESSION_TOKEN": creds["Token"],
    }


def _controller_keys(stack: LocalStack, doc: dict[str, Any]) -> dict[str, str]:
    iam = stack.client("iam")
    iam.create_user(UserName="ctl")
    iam.put_user_policy(
        UserName="ctl", PolicyName="sealboot-controller", PolicyDocument=json.dumps(_star(doc))
    )
    key = iam.create_access_key(UserName="ctl")["AccessKey"]
    return {
        "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
    }


def _denied(call: Callable[[], Any]) -> str:
    with pytest.raises(ClientError) as info:
        call()
    code = str(info.value.response["Error"]["Code"])
    # moto server answers a denied JSON-protocol call with a bare 403 (code "403").
    assert code in ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "403"), code
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] in (400, 403)
    return code


def _permitted(doc: dict[str, Any], action: str, arn: str) -> bool:
    return bool(
        IAMPolicy(json.dumps(doc)).is_action_permitted(action, arn) == PermissionResult.PERMITTED
    )


def _seal_two(stack: LocalStack, tmp_path: Path, *extra: str) -> tuple[Sealed, Sealed]:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = seal(stack, tmp_path / "a", cloud_config(), *extra, cluster=A)
    b = seal(stack, tmp_path / "b", cloud_config(), *extra, cluster=B)
    return a, b


def _arns(stack: LocalStack, sealed: Sealed) -> list[str]:
    if sealed.manifest.backend == "ssm":
        ssm = stack.client("ssm")
        return [ssm.get_parameter(Name=n)["Parameter"]["ARN"] for n in sealed.manifest.fragments]
    sm = stack.secrets()
    return [sm.describe_secret(SecretId=n)["ARN"] for n in sealed.manifest.fragments]


def test_node_policy_secrets_manager_actions_enforced_and_cluster_scoped(
    aws: LocalStack, tmp_path: Path
) -> None:
    a, b = _seal_two(aws, tmp_path)
    doc = pol.node_policy(namespace=NS, cluster=A)
    a_arn, b_arn = _arns(aws, a)[0], _arns(aws, b)[0]

    # Resource scoping, on the ARNs moto really assigned (with their -XXXXXX suffix).
    for action in ("secretsmanager:GetSecretValue", "secretsmanager:DeleteSecret"):
        assert _permitted(doc, action, a_arn)
        assert not _permitted(doc, action, b_arn)
    assert not _permitted(doc, "secretsmanager:CreateSecret", a_arn)

    keys = _node_keys(aws, doc)
    node = aws.client("secretsmanager", **keys)
    a0 = a.manifest.fragments[0]
    with _enforced(aws):
        assert node.get_secret_value(SecretId=a0)["Name"] == a0
        assert [
            v["Name"] for v in node.batch_get_secret_value(SecretIdList=[a0])["SecretValues"]
        ] == [a0]
        _denied(lambda: node.create_secret(Name="aws.cluster.x-k8s.io/x", SecretBinary=b"x"))
        _denied(lambda: node.list_secrets())
        _denied(lambda: node.describe_secret(SecretId=a0))
        _denied(lambda: node.put_secret_value(SecretId=a0, SecretBinary=b"evil"))
        _denied(lambda: node.tag_resource(SecretId=a0, Tags=[{"Key": "k", "Value": "v"}]))
        node.delete_secret(SecretId=a0, ForceDeleteWithoutRecovery=True)
    names = [s["Name"] for s in aws.secrets().list_secrets()["SecretList"]]
    assert names == list(b.manifest.fragments)


def test_node_policy_ssm_actions_enforced_and_cluster_scoped(
    aws: LocalStack, tmp_path: Path
) -> None:
    a, b = _seal_two(aws, tmp_path, "--backend", "ssm")
    doc = pol.node_policy(backend="ssm", namespace=NS, cluster=A)
    a_arn, b_arn = _arns(aws, a)[0], _arns(aws, b)[0]
    assert a_arn.startswith("arn:aws:ssm:us-east-1:")
    assert ":parameter/cluster.x-k8s.io/" in a_arn

    for action in ("ssm:GetParameters", "ssm:GetParameter", "ssm:DeleteParameters"):
        assert _permitted(doc, action, a_arn)
        assert not _permitted(doc, action, b_arn)
    assert not _permitted(doc, "ssm:PutParameter", a_arn)

    node = aws.client("ssm", **_node_keys(aws, doc))
    a0 = a.manifest.fragments[0]
    with _enforced(aws):
        got = node.get_parameters(Names=[a0], WithDecryption=True)
        assert [p["Name"] for p in got["Parameters"]] == [a0]
        assert node.get_parameter(Name=a0, WithDecryption=True)["Parameter"]["Name"] == a0
        _denied(lambda: node.put_parameter(Name="/cluster.x-k8s.io/x", Value="x", Type="String"))
        _denied(lambda: node.describe_parameters())
        _denied(lambda: node.get_parameters_by_path(Path="/cluster.x-k8s.io", Recursive=True))
        _denied(lambda: node.list_tags_for_resource(ResourceType="Parameter", ResourceId=a0))
        assert node.delete_parameters(Names=[a0])["DeletedParameters"] == [a0]
    left = aws.client("ssm").describe_parameters()["Parameters"]
    assert sorted(p["Name"] for p in left) == sorted(b.manifest.fragments)


@pytest.mark.parametrize("backend", ["secrets-manager", "ssm"])
def test_the_real_agent_needs_nothing_more_than_the_node_policy(
    instance: Instance, tmp_path: Path, backend: str
) -> None:
    stack = instance.stack
    sealed = seal(stack, tmp_path, cloud_config(3000), "--backend", backend, cluster=A)
    _node_keys(stack, pol.node_policy(backend=backend, namespace=NS, cluster=A))

    with _enforced(stack):
        res = instance.agent("fetch", "--manifest", str(sealed.manifest_path))

    assert res.returncode == 0, res.stderr
    assert instance.output.read_bytes() == sealed.payload
    assert "could not be deleted" not in res.stderr
    if backend == "ssm":
        assert stack.client("ssm").describe_parameters()["Parameters"] == []
    else:
        assert stack.secrets().list_secrets()["SecretList"] == []


@pytest.mark.parametrize(
    "partition_region", [("aws-cn", "cn-north-1"), ("aws-us-gov", "us-gov-west-1")]
)
def test_partition_arns_match_what_the_service_assigns(
    aws: LocalStack, partition_region: tuple[str, str]
) -> None:
    partition, region = partition_region
    keys = aws.admin_keys

    def client(service: str) -> Any:
        return boto3.client(
            service,
            region_name=region,
            endpoint_url=aws.moto.url,
            aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
        )

    name = f"aws.cluster.x-k8s.io/{NS}/{A}/w0/{'t' * 52}-0"
    secret_arn = client("secretsmanager").create_secret(Name=name, SecretBinary=b"x")["ARN"]
    pname = f"/cluster.x-k8s.io/{NS}/{A}/w0/{'t' * 52}/0"
    ssm = client("ssm")
    ssm.put_parameter(Name=pname, Value="eA==", Type="SecureString")
    param_arn = ssm.get_parameter(Name=pname)["Parameter"]["ARN"]
    assert secret_arn.startswith(f"arn:{partition}:secretsmanager:{region}:")

    for backend, arn, action in (
        ("secrets-manager", secret_arn, "secretsmanager:GetSecretValue"),
        ("ssm", param_arn, "ssm:GetParameters"),
    ):
        right = pol.node_policy(backend=backend, namespace=NS, cluster=A, region=region)
        assert _permitted(right, action, arn)
        wrong = pol.node_policy(backend=backend, namespace=NS, cluster=A, partition="aws")
        assert not _permitted(wrong, action, arn), "an aws-partition ARN never matches"


def _cli(stack: LocalStack, keys: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": "/nonexistent", **keys}
    return subprocess.run(
        [str(BIN / "sealboot"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("backend", ["secrets-manager", "ssm"])
def test_controller_policy_suffices_for_seal_delete_tag_and_sweep_and_nothing_else(
    aws: LocalStack, tmp_path: Path, backend: str
) -> None:
    ec2_admin = aws.client("ec2")
    doc = pol.controller_policy(backend=backend)
    keys = _controller_keys(aws, doc)
    store = "ssm" if backend == "ssm" else "secretsmanager"
    ctl = aws.client(store, **keys)
    ctl_ec2 = aws.client("ec2", **keys)
    common = ["--region", aws.region, "--endpoint-url", aws.moto.url, "--backend", backend]
    src = tmp_path / "userdata"
    src.write_bytes(cloud_config())

    def seal_cli(machine: str) -> Manifest:
        out = tmp_path / f"{machine}.json"
        res = _cli(
            aws, keys, "seal", "--namespace", NS, "--cluster", A, "--machine", machine,
            "--manifest-out", str(out), "-o", str(tmp_path / f"{machine}.mime"),
            *common, str(src),
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        return Manifest.from_json(out.read_text())

    with _enforced(aws):
        first = seal_cli("w0")
        res = _cli(aws, keys, "delete", str(tmp_path / "w0.json"), "--region", aws.region,
                   "--endpoint-url", aws.moto.url)  # fmt: skip
        assert res.returncode == 0, res.stderr

        second = seal_cli("w1")
        _denied(lambda: ctl_ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1))
    # The launch itself is not the controller's job here; launch and terminate as admin.
    iid = ec2_admin.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)["Instances"][0][
        "InstanceId"
    ]
    ec2_admin.terminate_instances(InstanceIds=[iid])
    with _enforced(aws):
        assert tag_instance(second, iid, ctl) == list(second.fragments)
        report = sweep(
            secrets=ctl if backend == "secrets-manager" else None,
            ssm=ctl if backend == "ssm" else None,
            ec2=ctl_ec2,
        )
        deleted = [o.decision.fragment.name for o in report.outcomes if o.status == "deleted"]
        assert deleted == list(second.fragments)
        assert {o.decision.reason for o in report.outcomes} == {"instance-terminated"}

        # Everything else is denied.
        iam = aws.client("iam", **keys)
        _denied(lambda: iam.create_user(UserName="mallory"))
        third = seal_cli("w2")
        name = third.fragments[0]
        if backend == "ssm":
            _denied(lambda: ctl.get_parameters(Names=[name], WithDecryption=True))
            _denied(lambda: ctl.get_parameter(Name=name))
            _denied(lambda: ctl.get_parameters_by_path(Path="/cluster.x-k8s.io", Recursive=True))
        else:
            _denied(lambda: ctl.get_secret_value(SecretId=name))
            _denied(lambda: ctl.batch_get_secret_value(SecretIdList=[name]))
            _denied(lambda: ctl.put_secret_value(SecretId=name, SecretBinary=b"x"))
            _denied(lambda: ctl.describe_secret(SecretId=name))
        _denied(lambda: ctl_ec2.terminate_instances(InstanceIds=[iid]))
    assert first.fragments


def test_controller_policy_scoped_to_a_cluster_resource_check(
    aws: LocalStack, tmp_path: Path
) -> None:
    a, b = _seal_two(aws, tmp_path)
    doc = pol.controller_policy(namespace=NS, cluster=A)
    a_arn, b_arn = _arns(aws, a)[0], _arns(aws, b)[0]
    for action in (
        "secretsmanager:CreateSecret",
        "secretsmanager:DeleteSecret",
        "secretsmanager:TagResource",
    ):
        assert _permitted(doc, action, a_arn)
        assert not _permitted(doc, action, b_arn)
    assert _permitted(doc, "secretsmanager:ListSecrets", "*")
    assert not _permitted(doc, "secretsmanager:GetSecretValue", a_arn)
