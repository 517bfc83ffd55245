"""sweep and tag-instance against moto server (Secrets Manager, SSM, EC2) over HTTP."""

from __future__ import annotations

import argparse
import datetime
import io
import json
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from sealboot import sweep_cli
from sealboot import tag_instance as tag_cli
from sealboot.aws import aws_client
from sealboot.errors import AccessDenied, AwsError, InputError
from sealboot.names import INSTANCE_TAG
from sealboot.report import SweepReport
from sealboot.seal import SealConfig
from sealboot.seal import seal as seal_api
from sealboot.sweep import sweep
from sealboot.tag_instance import tag_instance
from sealboot_agent.wire import Manifest
from tests.functional.conftest import cloud_config, incompressible, seal, secret_names
from tests.stack.local import LocalStack

NS = "default"
HOUR = datetime.timedelta(hours=1)
TOKEN = "t" * 52


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _seal(
    stack: LocalStack,
    machine: str,
    *,
    cluster: str = "c1",
    backend: str = "secrets-manager",
    ttl: int = 24 * 3600,
    fmt: str = "native",
    payload: bytes | None = None,
    client: Any = None,
) -> Manifest:
    cfg = SealConfig(
        region=stack.region,
        endpoint_url=stack.moto.url,
        ttl_seconds=ttl,
        backend=backend,
        format=fmt,
    )
    return seal_api(
        payload if payload is not None else cloud_config(),
        namespace=NS,
        cluster=cluster,
        machine=machine,
        config=cfg,
        client=client or stack.client("ssm" if backend == "ssm" else "secretsmanager"),
    )


def _sweep(stack: LocalStack, *, ssm: bool = False, sm: bool = True, **kwargs: Any) -> SweepReport:
    return sweep(
        secrets=stack.secrets() if sm else None,
        ssm=stack.client("ssm") if ssm else None,
        ec2=stack.client("ec2"),
        **kwargs,
    )


def _reasons(report: SweepReport, status: str) -> dict[str, str]:
    return {
        o.decision.fragment.name: o.decision.reason for o in report.outcomes if o.status == status
    }


def _params(stack: LocalStack) -> list[str]:
    ssm = stack.client("ssm")
    names: list[str] = []
    for page in ssm.get_paginator("describe_parameters").paginate():
        names.extend(p["Name"] for p in page["Parameters"])
    return sorted(names)


def _instances(stack: LocalStack, n: int) -> list[str]:
    resp = stack.client("ec2").run_instances(ImageId="ami-12c6146b", MinCount=n, MaxCount=n)
    return [i["InstanceId"] for i in resp["Instances"]]


def test_expired_fragments_are_deleted_and_live_ones_kept(aws: LocalStack, tmp_path: Path) -> None:
    short = seal(aws, tmp_path, cloud_config(), "--expires-in", "60", machine="short")
    (tmp_path / "long").mkdir()
    long = seal(aws, tmp_path / "long", cloud_config(), machine="long")

    now = _sweep(aws)
    assert _reasons(now, "kept") == dict.fromkeys(
        [*short.manifest.fragments, *long.manifest.fragments], "live"
    )
    assert now.counts()["deleted"] == 0

    later = _sweep(aws, now=_now() + datetime.timedelta(seconds=120))

    assert _reasons(later, "deleted") == dict.fromkeys(short.manifest.fragments, "expired")
    assert _reasons(later, "kept") == dict.fromkeys(long.manifest.fragments, "live")
    assert secret_names(aws) == sorted(long.manifest.fragments)


def test_terminated_and_unknown_instances_release_their_fragments(aws: LocalStack) -> None:
    gone, running = _seal(aws, "gone"), _seal(aws, "running")
    phantom, untied = _seal(aws, "phantom"), _seal(aws, "untied")
    dead, alive = _instances(aws, 2)
    aws.client("ec2").terminate_instances(InstanceIds=[dead])
    sm = aws.secrets()
    assert tag_instance(gone, dead, sm) == list(gone.fragments)
    tag_instance(running, alive, sm)
    tag_instance(phantom, "i-0123456789abcdef0", sm)  # EC2 never heard of it

    first = _sweep(aws)

    assert _reasons(first, "deleted") == dict.fromkeys(gone.fragments, "instance-terminated")
    kept = {
        o.decision.fragment.name: o.decision.detail for o in first.outcomes if o.status == "kept"
    }
    assert kept[running.fragments[0]] == f"instance {alive} is running"
    assert "grace period" in kept[phantom.fragments[0]], "EC2 may not show a new instance yet"
    assert kept[untied.fragments[0]] == "not expired"

    second = _sweep(aws, now=_now() + HOUR)

    assert _reasons(second, "deleted") == dict.fromkeys(phantom.fragments, "instance-gone")
    assert secret_names(aws) == sorted([*running.fragments, *untied.fragments])


def test_capa_format_fragments_sealboot_and_stock(aws: LocalStack) -> None:
    ours = _seal(aws, "capa-ours", fmt="capa")
    assert ours.fragments[0].startswith("aws.cluster.x-k8s.io/")
    sm = aws.secrets()
    stock = f"aws.cluster.x-k8s.io/{uuid.uuid4()}-0"  # what a stock CAPA controller writes
    sm.create_secret(
        Name=stock,
        SecretBinary=b"x",
        Tags=[
            {"Key": "sigs.k8s.io/cluster-api-provider-aws/cluster/c1", "Value": "owned"},
            {"Key": "sigs.k8s.io/cluster-api-provider-aws/role", "Value": "node"},
            {"Key": "Name", "Value": "m0"},
        ],
    )
    # Not ours: the wrong shape, or the right shape without the tags, or outside the root.
    strangers = [
        "aws.cluster.x-k8s.io/something-else",
        f"aws.cluster.x-k8s.io/{uuid.uuid4()}-0",
        f"aws.cluster.x-k8s.io/{NS}/c1/m/{TOKEN}-0",
        "unrelated/secret",
    ]
    for name in strangers:
        sm.create_secret(Name=name, SecretBinary=b"x")

    soon = _sweep(aws, now=_now() + HOUR)
    assert _reasons(soon, "kept") == {ours.fragments[0]: "live", stock: "live"}
    assert soon.ignored == 3, "three strangers under the root, untouched"

    day = _sweep(aws, now=_now() + 25 * HOUR, cluster="c1")

    assert _reasons(day, "deleted") == {ours.fragments[0]: "expired", stock: "older-than"}
    assert secret_names(aws) == sorted(strangers)
    (detail,) = [o.decision.detail for o in day.outcomes if o.decision.fragment.name == stock]
    assert "CAPA fragment without an expiry tag" in detail


def test_older_than_uses_the_creation_time(aws: LocalStack) -> None:
    m = _seal(aws, "w0")

    young = _sweep(aws, older_than=3600)
    assert young.counts()["kept"] == 1
    old = _sweep(aws, older_than=3600, now=_now() + 2 * HOUR)

    assert _reasons(old, "deleted") == dict.fromkeys(m.fragments, "older-than")
    assert secret_names(aws) == []


def test_cluster_and_namespace_scope_what_is_swept(aws: LocalStack) -> None:
    wall = (_now() - 48 * HOUR).timestamp()
    cfg = SealConfig(region=aws.region, endpoint_url=aws.moto.url, ttl_seconds=60)
    sm = aws.secrets()
    mine = seal_api(cloud_config(), namespace=NS, cluster="c1", machine="m", config=cfg,
                    client=sm, wall=lambda: wall)  # fmt: skip
    other = seal_api(cloud_config(), namespace=NS, cluster="c1-b", machine="m", config=cfg,
                     client=sm, wall=lambda: wall)  # fmt: skip
    elsewhere = seal_api(cloud_config(), namespace="prod", cluster="c1", machine="m", config=cfg,
                         client=sm, wall=lambda: wall)  # fmt: skip

    report = _sweep(aws, cluster="c1", namespace=NS)

    assert _reasons(report, "deleted") == dict.fromkeys(mine.fragments, "expired")
    assert secret_names(aws) == sorted([*other.fragments, *elsewhere.fragments])
    by_ns = _sweep(aws, namespace="prod", dry_run=True)
    assert _reasons(by_ns, "would-delete") == dict.fromkeys(elsewhere.fragments, "expired")


def test_dry_run_deletes_nothing(aws: LocalStack) -> None:
    m = _seal(aws, "w0", ttl=60)

    report = _sweep(aws, now=_now() + HOUR, dry_run=True)

    assert _reasons(report, "would-delete") == dict.fromkeys(m.fragments, "expired")
    assert report.counts()["deleted"] == 0
    assert secret_names(aws) == sorted(m.fragments)
    assert "would delete 1" in report.summary()
    assert "nothing was deleted" in report.summary()


class _Crash(BaseException):
    """Stands in for SIGKILL: seal's own clean-up never sees it."""


class _CrashAfter:
    def __init__(self, client: Any, creates: int):
        self._client = client
        self._left = creates

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name not in ("create_secret", "put_parameter"):
            return attr

        def create(**kwargs: Any) -> Any:
            if self._left == 0:
                raise _Crash
            self._left -= 1
            return attr(**kwargs)

        return create


@pytest.mark.parametrize("backend", ["secrets-manager", "ssm"])
def test_a_crash_between_create_and_manifest_leaves_nothing_sweep_cannot_find(
    aws: LocalStack, backend: str
) -> None:
    store = "ssm" if backend == "ssm" else "secretsmanager"
    crashing = _CrashAfter(aws.client(store), creates=1)
    payload = incompressible(70_000 if backend == "secrets-manager" else 5_000)
    with pytest.raises(_Crash):
        _seal(aws, "w0", backend=backend, ttl=600, payload=payload, client=crashing)
    left = _params(aws) if backend == "ssm" else secret_names(aws)
    assert len(left) == 1, "one fragment made it, and no manifest names it"

    found = _sweep(aws, ssm=backend == "ssm", sm=backend != "ssm")
    assert _reasons(found, "kept") == {left[0]: "live"}, "found by its tags before expiry"
    later = _sweep(aws, ssm=backend == "ssm", sm=backend != "ssm", now=_now() + HOUR)

    assert _reasons(later, "deleted") == {left[0]: "expired"}
    assert (_params(aws) if backend == "ssm" else secret_names(aws)) == []


def _put_param(stack: LocalStack, name: str, tags: dict[str, str]) -> None:
    stack.client("ssm").put_parameter(
        Name=name,
        Value="H4sIAAAAAAAAA0tLTgYAxM0nzAQAAAA=",
        Type="SecureString",
        Tags=[{"Key": k, "Value": v} for k, v in tags.items()],
    )


def _sealboot_tags(cluster: str, expires: datetime.datetime, **extra: str) -> dict[str, str]:
    return {
        f"sigs.k8s.io/cluster-api-provider-aws/cluster/{cluster}": "owned",
        "sigs.k8s.io/cluster-api-provider-aws/role": "node",
        "Name": "m",
        "sealboot.io/namespace": NS,
        "sealboot.io/format": "native",
        "sealboot.io/expires-at": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
        **extra,
    }


def test_ssm_sweep_expired_terminated_live_capa_in_batches_of_ten(aws: LocalStack) -> None:
    # Created directly, with the names and tags seal writes, so this does not lean on seal.
    past, future = _now() - HOUR, _now() + 48 * HOUR
    root = "/cluster.x-k8s.io"
    expired = [f"{root}/{NS}/c1/m{i}/{TOKEN}/0" for i in range(12)]
    for name in expired:
        _put_param(aws, name, _sealboot_tags("c1", past))
    live = f"{root}/{NS}/c1/live/{TOKEN}/0"
    _put_param(aws, live, _sealboot_tags("c1", future))
    (dead,) = _instances(aws, 1)
    aws.client("ec2").terminate_instances(InstanceIds=[dead])
    terminated = f"{root}/{NS}/c1/term/{TOKEN}/0"
    _put_param(aws, terminated, _sealboot_tags("c1", future, **{INSTANCE_TAG: dead}))
    capa = f"{root}/{uuid.uuid4()}/0"  # CAPA's SSM format: no expiry tag
    _put_param(aws, capa, {"sigs.k8s.io/cluster-api-provider-aws/cluster/c1": "owned"})
    stranger = f"{root}/{NS}/c1/x/{TOKEN}/0"  # the right shape, but not sealboot's tags
    _put_param(aws, stranger, {"owner": "someone-else"})
    aws.proxy.clear()

    report = sweep(
        ssm=_client(aws, "ssm", aws.proxy.url),
        ec2=aws.client("ec2"),
        now=_now() + 25 * HOUR,  # past the CAPA default of 24 h
        page_size=5,
    )

    assert _reasons(report, "deleted") == {
        **dict.fromkeys(expired, "expired"),
        terminated: "instance-terminated",
        capa: "older-than",
    }
    assert _reasons(report, "kept") == {live: "live"}
    assert report.ignored == 1
    assert _params(aws) == sorted([live, stranger])
    assert aws.proxy.calls["DeleteParameters"] == 2, "14 names in batches of at most 10"
    # moto pages DescribeParameters by 10 whatever MaxResults asks: 17 parameters, 2 pages.
    assert aws.proxy.calls["DescribeParameters"] == 2


def _client(stack: LocalStack, service: str, url: str) -> Any:
    keys = stack.admin_keys
    return boto3.client(
        service,
        region_name=stack.region,
        endpoint_url=url,
        aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
    )


def test_sweep_paginates_and_survives_throttling(aws: LocalStack, env: dict[str, str]) -> None:
    manifests = [_seal(aws, f"w{i}", ttl=60) for i in range(5)]
    aws.proxy.clear()
    aws.proxy.faults.throttle_next["ListSecrets"] = 2
    aws.proxy.faults.throttle_next["DeleteSecret"] = 2

    # The toolkit's own client: botocore's retries are the only ones, nothing retries on top.
    report = sweep(
        secrets=aws_client("secretsmanager", region=aws.region, endpoint_url=aws.proxy.url),
        ec2=aws.client("ec2"),
        now=_now() + HOUR,
        page_size=2,
    )

    assert report.counts()["deleted"] == 5
    assert secret_names(aws) == []
    assert aws.proxy.injected["ListSecrets:throttle"] == 2
    assert aws.proxy.injected["DeleteSecret:throttle"] == 2
    assert aws.proxy.calls["ListSecrets"] == 3 + 2, "three pages of two, plus two throttled"
    assert aws.proxy.calls["DeleteSecret"] == 5 + 2
    assert {m.fragments[0] for m in manifests} == set(_reasons(report, "deleted"))


def test_throttling_past_the_bound_fails_with_a_clear_error(
    aws: LocalStack, env: dict[str, str]
) -> None:
    _seal(aws, "w0")
    aws.proxy.faults.throttle["ListSecrets"] = 1.0
    client = aws_client(
        "secretsmanager", region=aws.region, endpoint_url=aws.proxy.url, max_attempts=2
    )
    with pytest.raises(AwsError, match="ThrottlingException") as info:
        sweep(secrets=client, ec2=aws.client("ec2"))
    assert info.value.message.startswith("listing the secretsmanager fragments under ")
    assert "gave up after 3 attempts" in info.value.message
    assert aws.proxy.injected["ListSecrets:throttle"] == 3


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sealboot")
    sub = parser.add_subparsers(dest="command", required=True)
    sweep_cli.add_parser(sub)
    tag_cli.add_parser(sub)
    return parser.parse_args(list(argv))


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def env(aws: LocalStack, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The process environment run() builds its clients from (credentials, EC2 endpoint)."""
    for key, value in aws.admin_keys.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", aws.moto.url)
    return {"AWS_REGION": aws.region, "SEALBOOT_ENDPOINT_URL": aws.moto.url}


def test_run_json_output_parses_and_progress_only_on_a_tty(
    aws: LocalStack, env: dict[str, str]
) -> None:
    wall = (_now() - 48 * HOUR).timestamp()
    cfg = SealConfig(region=aws.region, endpoint_url=aws.moto.url, ttl_seconds=60)
    sm = aws.secrets()
    old = seal_api(cloud_config(), namespace=NS, cluster="c1", machine="m0", config=cfg,
                   client=sm, wall=lambda: wall)  # fmt: skip
    new = _seal(aws, "m1")

    out, err = io.StringIO(), io.StringIO()
    assert sweep_cli.run(_args("sweep", "--dry-run", "--json"), env, out, err) == 0
    data = json.loads(out.getvalue())
    assert data["dry_run"] is True
    assert data["counts"]["would-delete"] == 1
    assert data["counts"]["kept"] == 1
    (doomed,) = [f for f in data["fragments"] if f["action"] == "would-delete"]
    assert doomed["name"] == old.fragments[0]
    assert doomed["reason"] == "expired"
    assert doomed["cluster"] == "c1"
    assert doomed["machine"] == "m0"
    assert err.getvalue() == ""
    assert len(secret_names(aws)) == 2

    out, tty = io.StringIO(), _Tty()
    assert (
        sweep_cli.run(_args("sweep", "--older-than", "1h", "--region", aws.region), env, out, tty)
        == 0
    )
    assert f"deleted  {old.fragments[0]}  (expired at " in out.getvalue()
    assert "sweep (secrets-manager): deleted 1, kept 1, failed 0" in out.getvalue()
    assert "\rsweep [" in tty.getvalue(), "a progress bar on a terminal"
    assert secret_names(aws) == sorted(new.fragments)


def test_run_ssm_and_all_backends(aws: LocalStack, env: dict[str, str]) -> None:
    past = _now() - HOUR
    _put_param(aws, f"/cluster.x-k8s.io/{NS}/c1/m/{TOKEN}/0", _sealboot_tags("c1", past))
    expired_secret = _seal(aws, "w0", ttl=60)  # expires in a minute: kept now
    out = io.StringIO()

    assert sweep_cli.run(_args("sweep", "--backend", "all", "--json"), env, out, io.StringIO()) == 0

    data = json.loads(out.getvalue())
    assert data["backends"] == ["secrets-manager", "ssm"]
    assert data["counts"]["deleted"] == 1
    assert data["counts"]["kept"] == 1
    assert _params(aws) == []
    assert secret_names(aws) == sorted(expired_secret.fragments)


def test_run_reports_denied_deletes_with_exit_code_5(
    aws: LocalStack, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    m = _seal(aws, "w0", ttl=60)
    wall = (_now() - 48 * HOUR).timestamp()
    cfg = SealConfig(region=aws.region, endpoint_url=aws.moto.url, ttl_seconds=60)
    old = seal_api(cloud_config(), namespace=NS, cluster="c1", machine="m0", config=cfg,
                   client=aws.secrets(), wall=lambda: wall)  # fmt: skip
    iam = aws.client("iam")
    iam.create_user(UserName="lister")
    only_list = {"Effect": "Allow", "Action": "secretsmanager:ListSecrets", "Resource": "*"}
    iam.put_user_policy(
        UserName="lister",
        PolicyName="p",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [only_list]}),
    )
    key = iam.create_access_key(UserName="lister")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    out = io.StringIO()

    aws.moto.enforce_iam(0)
    try:
        with pytest.raises(AccessDenied) as info:
            sweep_cli.run(_args("sweep"), env, out, io.StringIO())
    finally:
        aws.moto.enforce_iam(float("inf"))

    assert info.value.exit_code == 5
    assert "1 fragment(s) could not be deleted" in info.value.message
    assert "sealboot policy --role controller" in info.value.advice
    assert f"failed  {old.fragments[0]}  (expired at " in out.getvalue()
    assert "deleted 0, kept 1, failed 1" in out.getvalue()
    assert secret_names(aws) == sorted([*m.fragments, *old.fragments])


def test_run_tag_instance_command(aws: LocalStack, env: dict[str, str], tmp_path: Path) -> None:
    sealed = seal(aws, tmp_path, cloud_config())
    (iid,) = _instances(aws, 1)
    out = io.StringIO()

    rc = tag_cli.run(
        _args("tag-instance", str(sealed.manifest_path), "--instance-id", iid),
        env,
        io.StringIO(),
        out,
    )

    assert rc == 0
    assert out.getvalue().split() == list(sealed.manifest.fragments)
    tags = aws.secrets().describe_secret(SecretId=sealed.manifest.fragments[0])["Tags"]
    assert {"Key": INSTANCE_TAG, "Value": iid} in tags
    with pytest.raises(InputError, match="not an EC2 instance id"):
        tag_cli.run(
            _args("tag-instance", str(sealed.manifest_path), "--instance-id", "i-nope"),
            env,
            io.StringIO(),
            io.StringIO(),
        )


def test_run_tag_instance_reads_a_dash_manifest_from_the_injected_stdin(
    aws: LocalStack, env: dict[str, str], tmp_path: Path
) -> None:
    sealed = seal(aws, tmp_path, cloud_config())
    (iid,) = _instances(aws, 1)
    out = io.StringIO()

    stdin = io.StringIO(sealed.manifest.to_json())
    assert tag_cli.run(_args("tag-instance", "-", "--instance-id", iid), env, stdin, out) == 0

    assert out.getvalue().split() == list(sealed.manifest.fragments)
    tags = aws.secrets().describe_secret(SecretId=sealed.manifest.fragments[0])["Tags"]
    assert {"Key": INSTANCE_TAG, "Value": iid} in tags


def test_ssm_capa_names_whose_tags_are_denied_are_left_alone(aws: LocalStack) -> None:
    capa = f"/cluster.x-k8s.io/{uuid.uuid4()}/0"
    _put_param(aws, capa, {"sigs.k8s.io/cluster-api-provider-aws/cluster/other": "owned"})
    native = f"/cluster.x-k8s.io/{NS}/c1/m/{TOKEN}/0"
    iam = aws.client("iam")
    iam.create_user(UserName="scoped")
    only_describe = {"Effect": "Allow", "Action": "ssm:DescribeParameters", "Resource": "*"}
    iam.put_user_policy(
        UserName="scoped",
        PolicyName="p",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [only_describe]}),
    )
    key = iam.create_access_key(UserName="scoped")["AccessKey"]
    ssm = aws.client(
        "ssm", AWS_ACCESS_KEY_ID=key["AccessKeyId"], AWS_SECRET_ACCESS_KEY=key["SecretAccessKey"]
    )

    aws.moto.enforce_iam(0)
    try:
        report = sweep(ssm=ssm, cluster="c1", now=_now() + 48 * HOUR)
        assert report.ignored == 1
        assert report.outcomes == []
        _put_param(aws, native, _sealboot_tags("c1", _now()))
        with pytest.raises(AccessDenied, match="reading the tags of"):
            sweep(ssm=ssm, cluster="c1")
    finally:
        aws.moto.enforce_iam(float("inf"))
    assert _params(aws) == sorted([capa, native])
