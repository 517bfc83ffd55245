"""Least-privilege IAM policies for the instance role (node) and the controller.

Example::

    >>> doc = node_policy(namespace="default", cluster="c1")
    >>> doc["Statement"][0]["Resource"]
    'arn:aws:secretsmanager:*:*:secret:aws.cluster.x-k8s.io/default/c1/*'

What each role needs, and why (read from the code that makes the calls):

- node, Secrets Manager: the agent reads with BatchGetSecretValue, falling back to
  GetSecretValue, and deletes with DeleteSecret; the bash fallback uses GetSecretValue and
  DeleteSecret. BatchGetSecretValue has no resource type (it authorizes on ``*``); AWS then
  requires GetSecretValue on *each* secret in the batch, so the cluster scoping of
  GetSecretValue still holds. Without ListSecrets a node cannot use BatchGet's filters.
- node, SSM: the agent uses GetParameters/DeleteParameters (batches of 10), the bash fallback
  GetParameter/DeleteParameter.
- controller, Secrets Manager: seal calls CreateSecret (with Tags, which also needs TagResource)
  and DeleteSecret (undo); delete calls DeleteSecret; sweep calls
  ListSecrets (no resource type), DeleteSecret and ec2:DescribeInstances; tag-instance calls
  TagResource.
- controller, SSM: seal calls PutParameter (with Tags: AddTagsToResource) and DeleteParameters
  (undo); delete and sweep call DeleteParameters; sweep calls DescribeParameters (no resource type),
  ListTagsForResource and ec2:DescribeInstances; tag-instance calls AddTagsToResource.
- a customer KMS key: Secrets Manager envelope-encrypts (GenerateDataKey on write, Decrypt on
  read; AWS documents both for writers). Parameter Store encrypts Standard parameters directly
  (Encrypt) and Advanced ones with envelope encryption (GenerateDataKey); readers need Decrypt.
  Each KMS grant is limited to calls made through that service (``kms:ViaService``) and to the
  fragments' ARNs (encryption context ``SecretARN`` / ``PARAMETER_ARN``).
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from sealboot.errors import InputError
from sealboot.names import EXPIRY_TAG, component, default_root
from sealboot_agent.stores import STORES
from sealboot_agent.wire import (
    BACKEND_SECRETS_MANAGER,
    BACKEND_SSM,
    BACKENDS,
    REGION_RE,
    WireError,
    check_parameter_name,
    check_secret_name,
)

ROLE_NODE = "node"
ROLE_CONTROLLER = "controller"
ROLES = (ROLE_NODE, ROLE_CONTROLLER)
PARTITIONS = ("aws", "aws-us-gov", "aws-cn")
POLICY_VERSION = "2012-10-17"


NODE_ACTIONS: dict[str, tuple[str, ...]] = {
    BACKEND_SECRETS_MANAGER: ("secretsmanager:DeleteSecret", "secretsmanager:GetSecretValue"),
    BACKEND_SSM: (
        "ssm:DeleteParameter",
        "ssm:DeleteParameters",
        "ssm:GetParameter",
        "ssm:GetParameters",
    ),
}
# Actions with no resource type: IAM authorizes them on "*" only.
NODE_UNSCOPED_ACTIONS: dict[str, tuple[str, ...]] = {
    BACKEND_SECRETS_MANAGER: ("secretsmanager:BatchGetSecretValue",),
    BACKEND_SSM: (),
}
CONTROLLER_CREATE_ACTIONS: dict[str, tuple[str, ...]] = {
    BACKEND_SECRETS_MANAGER: ("secretsmanager:CreateSecret",),
    BACKEND_SSM: ("ssm:PutParameter",),
}
CONTROLLER_ACTIONS: dict[str, tuple[str, ...]] = {
    BACKEND_SECRETS_MANAGER: ("secretsmanager:DeleteSecret", "secretsmanager:TagResource"),
    BACKEND_SSM: (
        "ssm:AddTagsToResource",
        "ssm:DeleteParameters",
        "ssm:ListTagsForResource",
    ),
}
CONTROLLER_UNSCOPED_ACTIONS: dict[str, tuple[str, ...]] = {
    BACKEND_SECRETS_MANAGER: ("secretsmanager:ListSecrets",),
    BACKEND_SSM: ("ssm:DescribeParameters",),
}
SWEEP_EC2_ACTIONS = ("ec2:DescribeInstances",)
NODE_KMS_ACTIONS: dict[str, tuple[str, ...]] = {
    BACKEND_SECRETS_MANAGER: ("kms:Decrypt",),
    BACKEND_SSM: ("kms:Decrypt",),
}
CONTROLLER_KMS_ACTIONS: dict[str, tuple[str, ...]] = {
    BACKEND_SECRETS_MANAGER: ("kms:Decrypt", "kms:GenerateDataKey"),
    BACKEND_SSM: ("kms:Encrypt", "kms:GenerateDataKey"),
}
# A parameter ARN holds the name without its leading "/" ({bare}).
_ARN_RESOURCE = {BACKEND_SECRETS_MANAGER: "secret:{name}", BACKEND_SSM: "parameter/{bare}"}
_CHECK_NAME = {BACKEND_SECRETS_MANAGER: check_secret_name, BACKEND_SSM: check_parameter_name}
_WORD = {BACKEND_SECRETS_MANAGER: "Secrets", BACKEND_SSM: "Parameters"}
_CONTEXT_KEY = {
    BACKEND_SECRETS_MANAGER: "kms:EncryptionContext:SecretARN",
    BACKEND_SSM: "kms:EncryptionContext:PARAMETER_ARN",
}
# [0-9], never \d: in a str pattern \d also matches Unicode digits such as Arabic-Indic ones.
_ACCOUNT_RE = re.compile(r"^[0-9]{12}\Z")
_KEY_ARN_RE = re.compile(
    r"^arn:(?P<partition>aws|aws-us-gov|aws-cn):kms:(?P<region>[a-z0-9-]+):"
    r"(?P<account>[0-9]{12}):key/(?P<key>[A-Za-z0-9-]+)\Z"
)


@dataclass(frozen=True)
class Scope:
    """Where the fragments live, resolved and validated from the command line.

    Example::

        >>> Scope.build(namespace="default", cluster="c1", partition="aws-cn").partition
        'aws-cn'
    """

    backend: str = BACKEND_SECRETS_MANAGER
    namespace: str | None = None
    cluster: str | None = None
    partition: str = "aws"
    region: str = "*"
    account: str = "*"
    kms_key_arn: str | None = None

    @classmethod
    def build(
        cls,
        *,
        backend: str = BACKEND_SECRETS_MANAGER,
        namespace: str | None = None,
        cluster: str | None = None,
        kms_key_arn: str | None = None,
        partition: str | None = None,
        region: str | None = None,
        account: str | None = None,
    ) -> Scope:
        """Validate every input; raise InputError naming the one that is wrong."""
        if backend not in BACKENDS:
            raise InputError(f"unknown backend {backend!r}; use {' or '.join(BACKENDS)}")
        if cluster is not None and namespace is None:
            # IAM's "*" also matches "/", so <root>/*/<cluster>/* would match a *machine* named
            # like the cluster in any other cluster: no safe scope without the namespace.
            raise InputError(
                "--cluster needs --namespace: without it the resource pattern "
                "<root>/*/<cluster>/* would also match other clusters' machines"
            )
        namespace, cluster = component("namespace", namespace), component("cluster", cluster)
        key = _KEY_ARN_RE.match(kms_key_arn) if kms_key_arn is not None else None
        if kms_key_arn is not None and key is None:
            hint = (
                " (an alias ARN does not authorize use of the key: pass the key ARN)"
                if ":alias/" in kms_key_arn
                else ""
            )
            raise InputError(
                f"--kms-key-arn {kms_key_arn!r} is not a KMS key ARN "
                f"(arn:<partition>:kms:<region>:<account>:key/<id>){hint}"
            )
        if partition is not None and partition not in PARTITIONS:
            raise InputError(f"unknown partition {partition!r}; use one of {', '.join(PARTITIONS)}")
        if region is not None and region != "*" and not REGION_RE.match(region):
            raise InputError(f"--region {region!r} is not an AWS region name")
        if account is not None and account != "*" and not _ACCOUNT_RE.match(account):
            raise InputError(f"--account {account!r} must be a 12-digit AWS account id")
        implied = [
            (f"--region {region}", partition_of_region(region))
            if region not in (None, "*")
            else None,
            (f"--kms-key-arn {kms_key_arn}", key.group("partition")) if key else None,
        ]
        chosen = partition
        for item in implied:
            if item is None:
                continue
            source, part = item
            if chosen is None:
                chosen = part
            elif part != chosen:
                raise InputError(f"{source} is in partition {part}, not {chosen}")
        scope = cls(
            backend=backend,
            namespace=namespace,
            cluster=cluster,
            partition=chosen or "aws",
            region=region or "*",
            account=account or "*",
            kms_key_arn=kms_key_arn,
        )
        try:
            _CHECK_NAME[backend](scope.prefix() + "/x")
        except WireError as exc:
            raise InputError(str(exc)) from exc
        return scope

    def prefix(self) -> str:
        """The fragment-name prefix this scope covers, without a trailing ``/``."""
        parts = [default_root(self.backend).rstrip("/")]
        if self.namespace is not None:
            parts.append(self.namespace)
            if self.cluster is not None:
                parts.append(self.cluster)
        return "/".join(parts)

    @property
    def whole_root(self) -> bool:
        return self.namespace is None

    def fragment_arn(self, *, region: str | None = None) -> str:
        """The resource pattern of every fragment in scope (partition, region, account)."""
        return fragment_arn(
            self.backend,
            self.prefix() + "/*",
            partition=self.partition,
            region=region or self.region,
            account=self.account,
        )


def partition_of_region(region: str) -> str:
    """The partition a region belongs to: ``cn-north-1`` -> ``aws-cn``."""
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def fragment_arn(
    backend: str, name: str, *, partition: str = "aws", region: str = "*", account: str = "*"
) -> str:
    """The ARN (or pattern) of fragment *name*.

    Example::

        >>> fragment_arn("ssm", "/cluster.x-k8s.io/ns/c/*", partition="aws-cn")
        'arn:aws-cn:ssm:*:*:parameter/cluster.x-k8s.io/ns/c/*'
    """
    resource = _ARN_RESOURCE[backend].format(name=name, bare=name.lstrip("/"))
    return f"arn:{partition}:{STORES[backend].service}:{region}:{account}:{resource}"


def _dns_suffixes(partition: str) -> tuple[str, ...]:
    if partition == "aws-cn":
        # China's endpoints are *.amazonaws.com.cn. Both spellings are listed: each value can
        # only be set by AWS itself for a call made through that service, so neither widens it.
        return ("amazonaws.com.cn", "amazonaws.com")
    return ("amazonaws.com",)


def _via_service(backend: str, partition: str, region: str) -> str | list[str]:
    values = [f"{STORES[backend].service}.{region}.{s}" for s in _dns_suffixes(partition)]
    return values[0] if len(values) == 1 else values


def _kms_statement(scope: Scope, sid: str, actions: tuple[str, ...]) -> dict[str, Any]:
    assert scope.kms_key_arn is not None
    key = _KEY_ARN_RE.match(scope.kms_key_arn)
    assert key is not None
    region = key.group("region")  # KMS keys are regional; the service calls KMS in that region
    return {
        "Sid": sid,
        "Effect": "Allow",
        "Action": sorted(actions) if len(actions) > 1 else actions[0],
        "Resource": scope.kms_key_arn,
        "Condition": {
            "StringEquals": {
                "kms:ViaService": _via_service(scope.backend, scope.partition, region)
            },
            "StringLike": {_CONTEXT_KEY[scope.backend]: scope.fragment_arn(region=region)},
        },
    }


def _statement(sid: str, actions: tuple[str, ...], resource: str, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "Sid": sid,
        "Effect": "Allow",
        "Action": sorted(actions) if len(actions) > 1 else actions[0],
        "Resource": resource,
    }
    out.update(extra)
    return out


def _backend_word(scope: Scope) -> str:
    return _WORD[scope.backend]


def node_policy(**scope: Any) -> dict[str, Any]:
    """The instance role's policy: get and delete this cluster's fragments, nothing else.

    *scope* takes :meth:`Scope.build`'s keywords (backend, namespace, cluster, kms_key_arn,
    partition, region, account).

    Example::

        >>> node_policy(backend="ssm", namespace="ns", cluster="c")["Statement"][0]["Action"][0]
        'ssm:DeleteParameter'
    """
    return policy_for(ROLE_NODE, Scope.build(**scope))


def controller_policy(**scope: Any) -> dict[str, Any]:
    """The controller's policy: exactly what seal, delete, tag-instance and sweep call.

    Example::

        >>> "secretsmanager:ListSecrets" in json.dumps(controller_policy())
        True
    """
    return policy_for(ROLE_CONTROLLER, Scope.build(**scope))


def policy_for(role: str, scope: Scope) -> dict[str, Any]:
    """The policy document for *role* over *scope*.

    Example::

        >>> policy_for("node", Scope.build())["Version"]
        '2012-10-17'
    """
    b = scope.backend
    word = _backend_word(scope)
    statements: list[dict[str, Any]] = []
    if role == ROLE_NODE:
        statements.append(
            _statement(f"ReadAndDeleteFragment{word}", NODE_ACTIONS[b], scope.fragment_arn())
        )
        if NODE_UNSCOPED_ACTIONS[b]:
            # No resource type: AWS then authorizes GetSecretValue on each secret in the batch.
            statements.append(
                _statement("BatchGetChecksGetSecretValuePerSecret", NODE_UNSCOPED_ACTIONS[b], "*")
            )
        if scope.kms_key_arn:
            statements.append(_kms_statement(scope, "DecryptFragments", NODE_KMS_ACTIONS[b]))
    elif role == ROLE_CONTROLLER:
        statements.append(
            _statement(
                f"CreateFragment{word}WithExpiryTag",
                CONTROLLER_CREATE_ACTIONS[b],
                scope.fragment_arn(),
                # Every fragment carries the expiry tag, so sweep can always find leftovers.
                Condition={"Null": {f"aws:RequestTag/{EXPIRY_TAG}": "false"}},
            )
        )
        statements.append(
            _statement(f"TagAndDeleteFragment{word}", CONTROLLER_ACTIONS[b], scope.fragment_arn())
        )
        statements.append(_statement(f"SweepLists{word}", CONTROLLER_UNSCOPED_ACTIONS[b], "*"))
        statements.append(_statement("SweepChecksInstances", SWEEP_EC2_ACTIONS, "*"))
        if scope.kms_key_arn:
            statements.append(_kms_statement(scope, "EncryptFragments", CONTROLLER_KMS_ACTIONS[b]))
    else:
        raise InputError(f"unknown role {role!r}; use node or controller")
    return {"Version": POLICY_VERSION, "Statement": statements}


def policy_notes(role: str, scope: Scope) -> list[str]:
    """What the operator should know about a generated policy (printed on stderr)."""
    notes = []
    if scope.whole_root:
        notes.append(
            f"no --namespace/--cluster: the policy covers every fragment under {scope.prefix()}/ "
            "(every cluster in the account)"
        )
    elif scope.cluster is None:
        notes.append(
            f"no --cluster: the policy covers every cluster in namespace {scope.namespace}"
        )
    if not scope.whole_root:
        capa_prefix = default_root(scope.backend) + "/"
        notes.append(
            f"CAPA-format fragments ({capa_prefix}<uuid>...) carry no namespace or cluster in "
            "their name and are not covered; generate without --namespace/--cluster for them"
        )
    if role == ROLE_NODE and NODE_UNSCOPED_ACTIONS[scope.backend]:
        notes.append(
            "secretsmanager:BatchGetSecretValue has no resource type, so it is granted on '*'; "
            "AWS still checks GetSecretValue on every secret in the batch"
        )
    return notes


def render(doc: Mapping[str, Any]) -> str:
    """The policy as the JSON that ``aws iam put-role-policy`` takes."""
    return json.dumps(doc, indent=2) + "\n"


def add_parser(subparsers: Any) -> None:
    """Register ``sealboot policy`` on *subparsers* (an argparse subparsers object)."""
    p = subparsers.add_parser(
        "policy",
        help="print a least-privilege IAM policy for the node or the controller",
        description="Print a least-privilege IAM policy (JSON) for the instance role (node) or "
        "the controller that runs seal, delete, tag-instance and sweep.",
    )
    p.add_argument("--role", required=True, choices=ROLES, help="node or controller")
    p.add_argument("--namespace", help="scope to this namespace's fragments")
    p.add_argument("--cluster", help="scope to this cluster's fragments (needs --namespace)")
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default=BACKEND_SECRETS_MANAGER,
        help="where the fragments are (default: secrets-manager)",
    )
    p.add_argument(
        "--kms-key-arn",
        metavar="ARN",
        help="customer KMS key the fragments are sealed with (adds kms: grants on it only)",
    )
    p.add_argument(
        "--partition",
        choices=PARTITIONS,
        help="ARN partition (default: from --region or --kms-key-arn, else aws)",
    )
    p.add_argument("--region", help="restrict the fragment ARNs to this region (default: *)")
    p.add_argument("--account", metavar="ID", help="restrict to this account id (default: *)")


def run(args: argparse.Namespace, env: Mapping[str, str], stdout: TextIO, stderr: TextIO) -> int:
    """Print the policy for the parsed ``sealboot policy`` arguments; return the exit code."""
    scope = Scope.build(
        backend=args.backend,
        namespace=args.namespace,
        cluster=args.cluster,
        kms_key_arn=args.kms_key_arn,
        partition=args.partition,
        region=args.region,
        account=args.account,
    )
    for note in policy_notes(args.role, scope):
        stderr.write(f"sealboot: note: {note}\n")
    stdout.write(render(policy_for(args.role, scope)))
    return 0
