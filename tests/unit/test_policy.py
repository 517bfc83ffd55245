"""Generated IAM policies: the right actions on the right ARNs, every action real, every ARN sound.

Action names and ARN formats are checked with parliament (AWS's IAM definitions); resource
scoping with moto's own policy evaluator; syntax with moto's IAM policy validator.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import inspect
import io
import itertools
import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from moto.iam.access_control import IAMPolicy, PermissionResult
from moto.iam.policy_validation import IAMPolicyDocumentValidator
from parliament import analyze_policy_string  # type: ignore[import-untyped]

from sealboot import policy as pol
from sealboot.errors import InputError, SealbootError
from sealboot_agent.wire import name_component, native_fragment_names, ssm_fragment_names

ROOT = Path(__file__).resolve().parents[2]
KEY_ID = "1234abcd-12ab-34cd-56ef-1234567890ab"
KEYS = {
    "aws": f"arn:aws:kms:eu-west-1:111122223333:key/{KEY_ID}",
    "aws-us-gov": f"arn:aws-us-gov:kms:us-gov-west-1:111122223333:key/{KEY_ID}",
    "aws-cn": f"arn:aws-cn:kms:cn-north-1:111122223333:key/{KEY_ID}",
}
BACKENDS = ("secrets-manager", "ssm")
SCOPES: list[dict[str, str]] = [
    {},
    {"namespace": "default"},
    {"namespace": "default", "cluster": "a"},
]
_ARN_RE = re.compile(
    r"^arn:(?P<partition>aws|aws-us-gov|aws-cn):(?P<service>secretsmanager|ssm|kms):"
    r"(?P<region>[a-z0-9-]+|\*):(?P<account>\d{12}|\*):(?P<resource>.+)\Z"
)

EXPECTED_SCOPED = {
    ("node", "secrets-manager"): {"secretsmanager:GetSecretValue", "secretsmanager:DeleteSecret"},
    ("node", "ssm"): {
        "ssm:GetParameters",
        "ssm:GetParameter",
        "ssm:DeleteParameters",
        "ssm:DeleteParameter",
    },
    ("controller", "secrets-manager"): {
        "secretsmanager:CreateSecret",
        "secretsmanager:TagResource",
        "secretsmanager:DeleteSecret",
    },
    ("controller", "ssm"): {
        "ssm:PutParameter",
        "ssm:AddTagsToResource",
        "ssm:DeleteParameters",
        "ssm:ListTagsForResource",
    },
}
EXPECTED_STAR = {
    ("node", "secrets-manager"): {"secretsmanager:BatchGetSecretValue"},
    ("node", "ssm"): set(),
    ("controller", "secrets-manager"): {"secretsmanager:ListSecrets", "ec2:DescribeInstances"},
    ("controller", "ssm"): {"ssm:DescribeParameters", "ec2:DescribeInstances"},
}
EXPECTED_KMS = {
    ("node", "secrets-manager"): {"kms:Decrypt"},
    ("node", "ssm"): {"kms:Decrypt"},
    ("controller", "secrets-manager"): {"kms:GenerateDataKey", "kms:Decrypt"},
    ("controller", "ssm"): {"kms:Encrypt", "kms:GenerateDataKey"},
}


def _actions(stmt: dict[str, Any]) -> set[str]:
    action = stmt["Action"]
    return {action} if isinstance(action, str) else set(action)


def _by_resource(doc: dict[str, Any]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for stmt in doc["Statement"]:
        assert stmt["Effect"] == "Allow"
        out.setdefault(stmt["Resource"], set()).update(_actions(stmt))
    return out


def _permitted(doc: dict[str, Any], action: str, arn: str) -> bool:
    result = IAMPolicy(json.dumps(doc)).is_action_permitted(action, arn)
    return bool(result == PermissionResult.PERMITTED)


COMBOS = list(
    itertools.product(pol.ROLES, BACKENDS, pol.PARTITIONS, (False, True), range(len(SCOPES)))
)


@pytest.mark.parametrize(("role", "backend", "partition", "cmk", "scope_i"), COMBOS)
def test_every_combination_has_exactly_the_right_actions_on_sound_arns(
    role: str, backend: str, partition: str, cmk: bool, scope_i: int
) -> None:
    scope = pol.Scope.build(
        backend=backend,
        partition=partition,
        kms_key_arn=KEYS[partition] if cmk else None,
        **SCOPES[scope_i],
    )
    doc = pol.policy_for(role, scope)
    text = json.dumps(doc)

    assert doc["Version"] == "2012-10-17"
    # parliament knows every IAM action and each action's resource ARN format.
    findings = analyze_policy_string(text, include_community_auditors=True).findings
    assert [(f.issue, f.detail) for f in findings] == []
    IAMPolicyDocumentValidator(text).validate()  # moto's syntax check, as put-role-policy does

    by_resource = _by_resource(doc)
    fragments = scope.fragment_arn()
    assert by_resource.pop(fragments) == EXPECTED_SCOPED[role, backend]
    assert by_resource.pop("*", set()) == EXPECTED_STAR[role, backend]
    if cmk:
        assert by_resource.pop(KEYS[partition]) == EXPECTED_KMS[role, backend]
    assert by_resource == {}, "no other resource is granted anything"

    for resource in [fragments] + ([KEYS[partition]] if cmk else []):
        m = _ARN_RE.match(resource)
        assert m, resource
        assert m.group("partition") == partition
    expected_prefix = {
        "secrets-manager": "secret:aws.cluster.x-k8s.io/",
        "ssm": "parameter/cluster.x-k8s.io/",
    }[backend]
    resource_part = fragments.split(":", 5)[5]
    assert resource_part.startswith(expected_prefix)
    assert resource_part.endswith("/*")
    assert "//" not in resource_part


@pytest.mark.parametrize("backend", BACKENDS)
def test_node_policy_grants_no_list_create_describe_or_write(backend: str) -> None:
    doc = pol.node_policy(backend=backend, namespace="default", cluster="a")
    verbs = {a.split(":")[1] for s in doc["Statement"] for a in _actions(s)}
    forbidden = ("List", "Create", "Describe", "Put", "Tag", "Update", "Restore", "Untag")
    assert [v for v in verbs if v.startswith(forbidden)] == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_cluster_scoping_by_moto_evaluator(backend: str) -> None:
    doc = pol.node_policy(backend=backend, namespace="default", cluster="alpha")
    read = "ssm:GetParameters" if backend == "ssm" else "secretsmanager:GetSecretValue"

    def arn(ns: str, cluster: str, machine: str) -> str:
        if backend == "ssm":
            name = ssm_fragment_names("/cluster.x-k8s.io", ns, cluster, machine, 1, "t" * 52)[0]
            return pol.fragment_arn(backend, name, region="eu-west-1", account="111122223333")
        name = native_fragment_names("aws.cluster.x-k8s.io", ns, cluster, machine, 1, "t" * 52)[0]
        return pol.fragment_arn(backend, name + "-AbCdEf", region="eu-west-1", account="1" * 12)

    assert _permitted(doc, read, arn("default", "alpha", "w0"))
    assert not _permitted(doc, read, arn("default", "alpha-2", "w0")), "a prefix sibling"
    assert not _permitted(doc, read, arn("other", "alpha", "w0")), "same name, other namespace"
    assert not _permitted(doc, read, arn("other", "x", "alpha")), "a machine named like it"
    capa = (
        "/cluster.x-k8s.io/0b8f2c1e-1111-2222-3333-444455556666/0"
        if backend == "ssm"
        else "aws.cluster.x-k8s.io/0b8f2c1e-1111-2222-3333-444455556666-0-AbCdEf"
    )
    assert not _permitted(doc, read, pol.fragment_arn(backend, capa))


def test_whole_root_scope_covers_capa_names_and_says_so() -> None:
    scope = pol.Scope.build()
    doc = pol.policy_for("node", scope)
    capa = "arn:aws:secretsmanager:eu-west-1:111122223333:secret:aws.cluster.x-k8s.io/u-0-AbCdEf"
    assert _permitted(doc, "secretsmanager:GetSecretValue", capa)
    assert not _permitted(
        doc, "secretsmanager:GetSecretValue", "arn:aws:secretsmanager:eu-west-1:1:secret:other"
    )
    notes = pol.policy_notes("node", scope)
    assert any("every cluster" in n for n in notes)
    scoped_notes = pol.policy_notes("node", pol.Scope.build(namespace="d", cluster="a"))
    assert any("CAPA-format" in n for n in scoped_notes)


def test_long_names_are_shortened_like_seal_shortens_them() -> None:
    cluster = "c" * 200
    scope = pol.Scope.build(namespace="default", cluster=cluster)
    name = native_fragment_names("aws.cluster.x-k8s.io", "default", cluster, "m", 1, "t" * 52)[0]
    assert name_component("cluster", cluster) in scope.fragment_arn()
    assert _permitted(
        pol.policy_for("node", scope),
        "secretsmanager:GetSecretValue",
        pol.fragment_arn("secrets-manager", name + "-AbCdEf"),
    )


def test_region_and_account_pin_the_arns() -> None:
    doc = pol.node_policy(
        namespace="default", cluster="a", region="us-gov-west-1", account="111122223333"
    )
    (arn,) = [s["Resource"] for s in doc["Statement"] if s["Resource"] != "*"]
    assert arn == (
        "arn:aws-us-gov:secretsmanager:us-gov-west-1:111122223333:secret:"
        "aws.cluster.x-k8s.io/default/a/*"
    ), "the partition follows the region"
    other_account = arn.replace("111122223333", "444455556666").replace("*", "w0/t-0-AbCdEf")
    assert not _permitted(doc, "secretsmanager:GetSecretValue", other_account)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("partition", pol.PARTITIONS)
def test_kms_grants_are_limited_to_the_service_and_the_fragments(
    backend: str, partition: str
) -> None:
    for role in pol.ROLES:
        doc = pol.policy_for(
            role,
            pol.Scope.build(
                backend=backend, namespace="default", cluster="a", kms_key_arn=KEYS[partition]
            ),
        )
        (stmt,) = [s for s in doc["Statement"] if s["Resource"] == KEYS[partition]]
        region = KEYS[partition].split(":")[3]
        service = "ssm" if backend == "ssm" else "secretsmanager"
        via = stmt["Condition"]["StringEquals"]["kms:ViaService"]
        vias = [via] if isinstance(via, str) else via
        suffix = "amazonaws.com.cn" if partition == "aws-cn" else "amazonaws.com"
        assert f"{service}.{region}.{suffix}" in vias
        assert all(v.startswith(f"{service}.{region}.") for v in vias)
        context_key = (
            "kms:EncryptionContext:PARAMETER_ARN"
            if backend == "ssm"
            else "kms:EncryptionContext:SecretARN"
        )
        context = stmt["Condition"]["StringLike"][context_key]
        assert context.startswith(f"arn:{partition}:{service}:{region}:")
        assert context.endswith("/default/a/*")


def test_the_key_must_be_a_key_arn_in_the_same_partition() -> None:
    with pytest.raises(InputError, match="alias ARN"):
        pol.Scope.build(kms_key_arn="arn:aws:kms:eu-west-1:111122223333:alias/sealboot")
    with pytest.raises(InputError, match="partition aws-cn, not aws"):
        pol.Scope.build(partition="aws", kms_key_arn=KEYS["aws-cn"])
    with pytest.raises(InputError, match="partition aws-us-gov, not aws-cn"):
        pol.Scope.build(region="cn-north-1", kms_key_arn=KEYS["aws-us-gov"])
    assert pol.Scope.build(kms_key_arn=KEYS["aws-cn"]).partition == "aws-cn"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cluster": "a"}, "needs --namespace"),
        ({"namespace": "a b"}, "namespace name"),
        ({"namespace": "ns", "cluster": "$(x)"}, "cluster name"),
        ({"namespace": "ns", "cluster": "a+b", "backend": "ssm"}, "SSM parameter path"),
        ({"region": "mars-1"}, "not an AWS region"),
        ({"account": "12345"}, "12-digit"),
        ({"partition": "aws-iso"}, "unknown partition"),
        ({"backend": "s3"}, "unknown backend"),
    ],
)
def test_bad_input_is_refused(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(InputError, match=message):
        pol.Scope.build(**kwargs)


def test_parliament_catches_what_it_is_trusted_to_catch() -> None:
    """The checks above would notice a typo in an action or a malformed ARN."""
    doc = pol.node_policy(backend="ssm", namespace="default", cluster="a")
    doc["Statement"][0]["Action"] = ["ssm:GetParameterz"]
    assert [f.issue for f in analyze_policy_string(json.dumps(doc)).findings] == ["UNKNOWN_ACTION"]
    doc = pol.node_policy(backend="ssm", namespace="default", cluster="a")
    doc["Statement"][0]["Resource"] = "arn:aws:ssm:*:*:paramter/cluster.x-k8s.io/*"
    assert [f.issue for f in analyze_policy_string(json.dumps(doc)).findings] == [
        "RESOURCE_MISMATCH"
    ]


def _iam_actions() -> dict[str, str]:
    """boto3 method name -> IAM action, for the services the toolkit and the agent call."""
    import boto3

    session = boto3.session.Session(region_name="eu-west-1")
    names: dict[str, str] = {}
    for service in ("secretsmanager", "ssm", "ec2"):
        model = session.client(service, aws_access_key_id="x", aws_secret_access_key="y")
        for op in model.meta.service_model.operation_names:
            names.setdefault(_snake(op), f"{service}:{op}")
    return names


def _operations(*texts: str) -> set[str]:
    """IAM action names of the boto3 calls made in the source *texts* (``client.x(``)."""
    names = _iam_actions()
    found = set()
    for text in texts:
        for method in re.findall(r"\b(?:client|ec2)\.([a-z][a-z_]+)\b", text):
            if method in names:
                found.add(names[method])
    return found


def _snake(name: str) -> str:
    import botocore

    return str(botocore.xform_name(name))


class _Recorder:
    """A client that records every operation called on it and answers from *answers*."""

    def __init__(self, answers: dict[str, Any]):
        self.answers = answers
        self.called: set[str] = set()
        self.meta = SimpleNamespace(region_name="eu-west-1")

    def get_paginator(self, operation: str) -> Any:
        self.called.add(operation)
        return SimpleNamespace(paginate=lambda **_: iter([self.answers.get(operation, {})]))

    def __getattr__(self, operation: str) -> Any:
        def call(**_: Any) -> Any:
            self.called.add(operation)
            return self.answers.get(operation, {})

        return call


def _toolkit_calls(backend: str) -> set[str]:
    """What seal (with its undo), delete, tag-instance and sweep call on *backend* and EC2."""
    from sealboot.delete import delete
    from sealboot.seal import SealConfig, seal
    from sealboot.sweep import sweep
    from sealboot.tag_instance import tag_instance

    expired = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)
    tags = [
        {"Key": "sealboot.io/expires-at", "Value": "2000-01-02T00:00:00Z"},
        {"Key": "sealboot.io/instance-id", "Value": "i-0123456789abcdef0"},
    ]
    name = native_fragment_names("aws.cluster.x-k8s.io", "ns", "c1", "m0", 1, "a" * 52)[0]
    param = ssm_fragment_names("/cluster.x-k8s.io", "ns", "c1", "m0", 1, "a" * 52)[0]
    store = _Recorder(
        {
            "list_secrets": {"SecretList": [{"Name": name, "Tags": tags, "CreatedDate": expired}]},
            "describe_parameters": {"Parameters": [{"Name": param, "LastModifiedDate": expired}]},
            "list_tags_for_resource": {"TagList": tags},
        }
    )
    ec2 = _Recorder({})

    def fail(manifest: Any) -> None:
        raise InputError("the undo runs too")

    cfg = SealConfig(region="eu-west-1", backend=backend)
    with pytest.raises(InputError):
        seal(
            b"x", namespace="ns", cluster="c1", machine="m0", config=cfg, client=store, commit=fail
        )
    manifest = seal(b"x", namespace="ns", cluster="c1", machine="m0", config=cfg, client=store)
    with contextlib.suppress(SealbootError):  # an answer without DeletedParameters: "failed"
        delete(manifest, client=store)
    tag_instance(manifest, "i-0123456789abcdef0", store)
    sm = backend == "secrets-manager"
    report = sweep(secrets=store if sm else None, ssm=None if sm else store, ec2=ec2)
    assert len(report.outcomes) == 1, "the listed fragment was found, decided and deleted"
    names = _iam_actions()
    return {names[op] for op in store.called | ec2.called}


def test_controller_policy_covers_exactly_what_the_toolkit_calls() -> None:
    called: set[str] = set()
    granted: set[str] = set()
    for backend in BACKENDS:
        called |= _toolkit_calls(backend)
        for stmt in pol.controller_policy(backend=backend)["Statement"]:
            granted |= _actions(stmt)
    assert called == granted
    assert {"secretsmanager:CreateSecret", "ssm:PutParameter", "ec2:DescribeInstances"} <= called


def _store_methods(*methods: str) -> list[str]:
    """The source of these methods of every Store: where the agent's AWS calls are made."""
    from sealboot_agent.stores import STORES

    return [inspect.getsource(getattr(type(s), m)) for s in STORES.values() for m in methods]


def test_node_policy_covers_what_the_agent_and_the_fallback_call() -> None:
    agent = ROOT / "agent/sealboot_agent"
    sources = [(agent / f).read_text() for f in ("fetch.py", "delete.py")]
    called = _operations(*sources, *_store_methods("get", "get_one", "delete"))
    # The fallback's AWS CLI calls are argv lists in fallback.py: ["ssm", "get-parameter", ...].
    fallback = (agent / "fallback.py").read_text()
    for service, command in re.findall(r'"(secretsmanager|ssm)",\s*"([a-z]+-[a-z-]+)"', fallback):
        called.add(f"{service}:{''.join(w.title() for w in command.split('-'))}")
    granted = set()
    for backend in BACKENDS:
        for stmt in pol.node_policy(backend=backend)["Statement"]:
            granted |= _actions(stmt)
    assert called == granted


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sealboot")
    sub = parser.add_subparsers(dest="command", required=True)
    pol.add_parser(sub)
    return parser.parse_args(["policy", *argv])


def test_run_prints_the_policy_and_notes() -> None:
    out, err = io.StringIO(), io.StringIO()
    args = _parse("--role", "node", "--namespace", "default", "--cluster", "a", "--backend", "ssm")
    assert pol.run(args, {}, out, err) == 0
    assert json.loads(out.getvalue()) == pol.node_policy(
        backend="ssm", namespace="default", cluster="a"
    )
    assert "CAPA-format" in err.getvalue()
    assert "every cluster" not in err.getvalue()

    out, err = io.StringIO(), io.StringIO()
    assert pol.run(_parse("--role", "controller"), {}, out, err) == 0
    assert json.loads(out.getvalue()) == pol.controller_policy()
    assert "every cluster" in err.getvalue()


def test_run_refuses_bad_flags_with_input_error() -> None:
    args = _parse("--role", "node", "--cluster", "a")
    with pytest.raises(InputError):
        pol.run(args, {}, io.StringIO(), io.StringIO())


def test_documented_example_policies_are_what_the_generator_prints() -> None:
    """Each ``<!-- sealboot policy ARGS -->`` marker is followed by exactly that command's JSON."""
    import shlex

    pattern = re.compile(r"<!-- sealboot policy (.+?) -->\n```json\n(.*?)\n```", re.S)
    checked = 0
    for doc in (ROOT / "README.md", ROOT / "docs/permissions.md"):
        if not doc.exists():
            continue
        for argv, shown in pattern.findall(doc.read_text()):
            out = io.StringIO()
            assert pol.run(_parse(*shlex.split(argv)), {}, out, io.StringIO()) == 0
            assert json.loads(shown) == json.loads(out.getvalue()), f"{doc.name}: {argv}"
            checked += 1
    assert checked >= 5


# --- hostile input: \d also matches Unicode digits --------------------------------------------


@pytest.mark.parametrize("digit", ["\u0661", "\u06f1", "\uff11"])
@pytest.mark.parametrize(
    "kwargs",
    [
        lambda d: {"region": f"eu-west-{d}"},
        lambda d: {"account": d * 12},
        lambda d: {"kms_key_arn": f"arn:aws:kms:eu-west-1:{d * 12}:key/{KEY_ID}"},
    ],
)
def test_non_ascii_digits_are_refused(digit: str, kwargs: Any) -> None:
    with pytest.raises(InputError):
        pol.Scope.build(**kwargs(digit))


def test_cli_with_a_non_ascii_region_exits_2() -> None:
    from sealboot.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = main(
        ["policy", "--role", "node", "--region", "eu-west-\u0661"], {}, stdout=out, stderr=err
    )
    assert code == 2
    assert out.getvalue() == ""
    assert "not an AWS region name" in err.getvalue()
