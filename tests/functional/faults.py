"""The fault matrix: each fault, how it is injected and cleared, and the documented outcome.

The README's fault table is generated from FAULTS (scripts/fault_table.py) and a test checks that
it still matches, so the documentation cannot drift from what the tests prove.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.stack.local import LocalStack


@dataclass
class Ctx:
    stack: LocalStack
    root: Path
    fragments: tuple[str, ...]
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    wrap: list[str] = field(default_factory=list)  # command prefix, e.g. unshare + mount
    saved: dict[str, bytes] = field(default_factory=dict)


Step = Callable[[Ctx], None]


def _nothing(ctx: Ctx) -> None:
    return


def _throttle_all(ctx: Ctx) -> None:
    for api in ("BatchGetSecretValue", "GetSecretValue"):
        ctx.stack.proxy.faults.throttle[api] = 1.0
    ctx.env["SEALBOOT_DEADLINE"] = "4"


def _throttle_burst(ctx: Ctx) -> None:
    for api in ("BatchGetSecretValue", "DeleteSecret"):
        ctx.stack.proxy.faults.throttle_next[api] = 4


def _burst_5xx(ctx: Ctx) -> None:
    ctx.stack.proxy.faults.errors_5xx = 3


def _drop(ctx: Ctx) -> None:
    ctx.stack.proxy.faults.drop = 2


def _latency(ctx: Ctx) -> None:
    ctx.stack.proxy.faults.latency = 0.3


def _clear_proxy(ctx: Ctx) -> None:
    ctx.stack.proxy.clear()


def _imds_down_briefly(ctx: Ctx) -> None:
    ctx.stack.imds.faults.unavailable_until = time.monotonic() + 2


def _imds_down(ctx: Ctx) -> None:
    ctx.stack.imds.faults.unavailable_until = time.monotonic() + 3600
    ctx.env["SEALBOOT_DEADLINE"] = "3"


def _imds_slow(ctx: Ctx) -> None:
    ctx.stack.imds.faults.latency = 0.3


def _role_late(ctx: Ctx) -> None:
    ctx.stack.imds.faults.no_role_until = time.monotonic() + 2


def _role_absent(ctx: Ctx) -> None:
    ctx.stack.imds.faults.no_role_until = time.monotonic() + 3600
    ctx.env["SEALBOOT_DEADLINE"] = "3"


def _token_refused(ctx: Ctx) -> None:
    ctx.stack.imds.faults.refuse_token = True


def _clear_imds(ctx: Ctx) -> None:
    faults = ctx.stack.imds.faults
    faults.unavailable_until = faults.no_role_until = faults.latency = 0
    faults.refuse_token = False


def _unreachable(ctx: Ctx) -> None:
    ctx.args += ["--endpoint-url", "http://127.0.0.1:9"]
    ctx.env["SEALBOOT_DEADLINE"] = "4"


def _reachable(ctx: Ctx) -> None:
    ctx.args.clear()


def _missing(ctx: Ctx) -> None:
    ctx.stack.secrets().delete_secret(SecretId=ctx.fragments[-1], ForceDeleteWithoutRecovery=True)


def _corrupt(ctx: Ctx) -> None:
    sm = ctx.stack.secrets()
    name = ctx.fragments[0]
    good = sm.get_secret_value(SecretId=name)["SecretBinary"]
    ctx.saved["good"] = good
    sm.put_secret_value(SecretId=name, SecretBinary=bytes([good[0] ^ 0xFF]) + good[1:])


def _uncorrupt(ctx: Ctx) -> None:
    ctx.stack.secrets().put_secret_value(
        SecretId=ctx.fragments[0], SecretBinary=ctx.saved.pop("good")
    )


def _deny(ctx: Ctx) -> None:
    _set_node_policy(ctx, ["secretsmanager:DescribeSecret"])
    ctx.stack.moto.enforce_iam(0)


def _deny_delete(ctx: Ctx) -> None:
    _set_node_policy(ctx, ["secretsmanager:GetSecretValue", "secretsmanager:BatchGetSecretValue"])
    ctx.stack.moto.enforce_iam(0)


def _deny_delete_required(ctx: Ctx) -> None:
    _deny_delete(ctx)
    ctx.args.append("--require-delete")


def _allow(ctx: Ctx) -> None:
    ctx.stack.moto.enforce_iam(float("inf"))
    _set_node_policy(
        ctx,
        [
            "secretsmanager:GetSecretValue",
            "secretsmanager:BatchGetSecretValue",
            "secretsmanager:DeleteSecret",
        ],
    )
    if "--require-delete" in ctx.args:
        ctx.args.remove("--require-delete")


def _set_node_policy(ctx: Ctx, actions: list[str]) -> None:
    import json

    ctx.stack.client("iam").put_role_policy(
        RoleName=ctx.stack.identity.role_name,
        PolicyName="sealboot-node",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}],
            }
        ),
    )


def _full_disk(ctx: Ctx) -> None:
    (ctx.root / "etc").mkdir(exist_ok=True)
    ctx.wrap = _mount_wrap(ctx.root / "etc", "size=4k")


def _read_only(ctx: Ctx) -> None:
    (ctx.root / "etc").mkdir(exist_ok=True)
    ctx.wrap = _mount_wrap(ctx.root / "etc", "ro")


def _mount_wrap(target: Path, options: str) -> list[str]:
    # A private mount namespace, so the tmpfs never shows up outside the agent's process.
    script = 'mount -t tmpfs -o "$1" sealboot-test "$2" && shift 2 && exec "$@"'
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
        options,
        str(target),
    ]


def _unwrap(ctx: Ctx) -> None:
    ctx.wrap = []


@dataclass(frozen=True)
class Fault:
    id: str
    fault: str
    outcome: str
    exit_code: int
    log: str  # a substring the log must hold
    inject: Step
    clear: Step = _nothing
    output_written: bool = False
    fragments_deleted: bool = False
    recoverable: bool = True  # a rerun succeeds once the fault is cleared


FAULTS: tuple[Fault, ...] = (
    Fault(
        "throttled-always",
        "every Get call throttled (ThrottlingException)",
        "retried with full jitter until the deadline, then gives up",
        7,
        "gave up after",
        _throttle_all,
        _clear_proxy,
    ),
    Fault(
        "throttled-burst",
        "the first 4 BatchGet and Delete calls throttled",
        "retried; succeeds",
        0,
        "ThrottlingException, retry",
        _throttle_burst,
        output_written=True,
        fragments_deleted=True,
    ),
    Fault(
        "5xx-burst",
        "three 503 ServiceUnavailable in a row",
        "retried; succeeds",
        0,
        "done in",
        _burst_5xx,
        output_written=True,
        fragments_deleted=True,
    ),
    Fault(
        "dropped",
        "two responses cut off mid-body",
        "retried; succeeds",
        0,
        "done in",
        _drop,
        output_written=True,
        fragments_deleted=True,
    ),
    Fault(
        "slow-aws",
        "300 ms added to every AWS call",
        "succeeds",
        0,
        "done in",
        _latency,
        output_written=True,
        fragments_deleted=True,
    ),
    Fault(
        "aws-unreachable",
        "Secrets Manager endpoint refuses connections",
        "retried until the deadline, then gives up",
        7,
        "EndpointConnectionError",
        _unreachable,
        _reachable,
    ),
    Fault(
        "imds-blip",
        "IMDS down for the first 2 s",
        "retried; succeeds",
        0,
        "done in",
        _imds_down_briefly,
        output_written=True,
        fragments_deleted=True,
    ),
    Fault(
        "imds-down",
        "IMDS down past the deadline",
        "gives up at the deadline",
        3,
        "no IMDSv2 token before the deadline",
        _imds_down,
        _clear_imds,
    ),
    Fault(
        "imds-slow",
        "300 ms added to every IMDS answer",
        "succeeds",
        0,
        "done in",
        _imds_slow,
        output_written=True,
        fragments_deleted=True,
    ),
    Fault(
        "profile-late",
        "instance profile attached 2 s after boot",
        "waits for the credentials; succeeds",
        0,
        "done in",
        _role_late,
        output_written=True,
        fragments_deleted=True,
    ),
    Fault(
        "no-profile",
        "no instance profile (credentials 404) past the deadline",
        "gives up at the deadline",
        3,
        "security-credentials",
        _role_absent,
        _clear_imds,
    ),
    Fault(
        "token-refused",
        "IMDS refuses token requests (403, IMDS disabled)",
        "stops at once",
        3,
        "token request refused",
        _token_refused,
        _clear_imds,
    ),
    Fault(
        "missing-fragment",
        "a fragment was deleted",
        "stops before any delete; names it",
        4,
        "does not exist",
        _missing,
        recoverable=False,
    ),
    Fault(
        "corrupt-fragment",
        "a fragment's bytes changed",
        "digest mismatch; nothing written",
        6,
        "sha256 of the reassembled fragments",
        _corrupt,
        _uncorrupt,
    ),
    Fault(
        "denied",
        "the role may not read the fragments",
        "stops before any delete; names it",
        5,
        "denied",
        _deny,
        _allow,
    ),
    Fault(
        "disk-full",
        "no space left where the user data goes",
        "nothing deleted; says the disk is full",
        8,
        "no space left",
        _full_disk,
        _unwrap,
    ),
    Fault(
        "read-only",
        "the target file system is read-only",
        "nothing deleted; says it is read-only",
        8,
        "read-only",
        _read_only,
        _unwrap,
    ),
    Fault(
        "delete-denied",
        "the role may read but not delete",
        "user data written; boot continues; names the fragments left",
        0,
        "could not be deleted",
        _deny_delete,
        _allow,
        output_written=True,
    ),
    Fault(
        "delete-denied-required",
        "as above, with --require-delete",
        "user data written; exits non-zero",
        9,
        "could not be deleted",
        _deny_delete_required,
        _allow,
        output_written=True,
    ),
)


def markdown_table() -> str:
    rows = ["| fault | outcome | exit |", "|---|---|---|"]
    rows += [f"| {f.fault} | {f.outcome} | {f.exit_code} |" for f in FAULTS]
    return "\n".join(rows) + "\n"
