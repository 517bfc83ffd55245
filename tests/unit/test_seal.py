"""Unit tests of seal() against a fake Secrets Manager client (no network, no sleeping)."""

from __future__ import annotations

import datetime
import gzip
import hashlib
import importlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import uuid
import zlib
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import NoCredentialsError, ReadTimeoutError

from sealboot.errors import NOTHING_CREATED, AccessDenied, AwsError, InputError, SealbootError
from sealboot.seal import SealConfig, Undone, seal
from sealboot_agent.assemble import assemble
from sealboot_agent.wire import MANIFEST_MAX_BYTES, SECRETS_MANAGER_MAX_VALUE, Manifest
from tests.unit.fakes import FakeClock, FakeSecrets, client_error

WALL = 1_700_000_000.0
CFG = SealConfig(region="eu-west-1")


def do_seal(
    data: bytes,
    fake: FakeSecrets,
    config: SealConfig = CFG,
    clock: FakeClock | None = None,
    *,
    machine: str = "m1",
    cluster: str = "c1",
    namespace: str = "default",
    role: str = "node",
) -> Manifest:
    clock = clock or FakeClock()
    return seal(
        data,
        namespace=namespace,
        cluster=cluster,
        machine=machine,
        role=role,
        config=config,
        client=fake,
        clock=clock,
        wall=lambda: WALL,
    )


def tags_of(fake: FakeSecrets, index: int = 0) -> dict[str, str]:
    tags = fake.ops("create_secret")[index]["Tags"]
    return {t["Key"]: t["Value"] for t in tags}


# --- the happy paths -----------------------------------------------------------------------


def test_small_user_data_fits_one_fragment_and_round_trips() -> None:
    fake = FakeSecrets()
    data = b"#cloud-config\nruncmd: [echo hi]\n"
    m = do_seal(data, fake)
    assert m.count == 1
    assert m.format == "native"
    assert m.region == "eu-west-1"
    stream = fake.store[m.fragments[0]]
    assert isinstance(stream, bytes)
    assert gzip.decompress(stream) == data
    assert m.sha256 == hashlib.sha256(stream).hexdigest()
    assert m.size == len(stream)
    assert m.raw_size == len(data)
    assert m.labels["machine"] == "m1"
    assert m.labels["cluster"] == "c1"


def test_native_names_follow_the_contract() -> None:
    fake = FakeSecrets()
    m = do_seal(b"x", fake, machine="worker-0", cluster="prod", namespace="team-a")
    (name,) = m.fragments
    assert re.fullmatch(r"aws\.cluster\.x-k8s\.io/team-a/prod/worker-0/[a-z2-7]{52}-0", name)


def test_two_seals_of_the_same_data_use_different_names() -> None:
    fake = FakeSecrets()
    a = do_seal(b"same", fake)
    b = do_seal(b"same", fake)
    assert set(a.fragments).isdisjoint(b.fragments)


def test_incompressible_150k_splits_into_three_fragments_that_reassemble() -> None:
    fake = FakeSecrets()
    data = os.urandom(150 * 1024)
    m = do_seal(data, fake)
    assert m.count == 3
    chunks = []
    for name in m.fragments:
        value = fake.store[name]
        assert isinstance(value, bytes)
        assert 1 <= len(value) <= SECRETS_MANAGER_MAX_VALUE
        chunks.append(value)
    assert all(len(c) == SECRETS_MANAGER_MAX_VALUE for c in chunks[:-1])
    assert assemble(m, chunks, max_size=1 << 20) == data
    for i, kwargs in enumerate(fake.ops("create_secret")):
        assert f"{i + 1}/3" in kwargs["Description"]


def test_capa_format_names_and_7000_byte_chunks() -> None:
    fake = FakeSecrets()
    data = os.urandom(20000)
    m = do_seal(data, fake, SealConfig(region="eu-west-1", format="capa"))
    assert m.format == "capa"
    stream = gzip.compress(data)  # only used for its length: > 14000, so at least 3 chunks
    assert m.count == -(-(m.size or 0) // 7000) >= 3
    assert len(stream) > 14000
    prefixes = set()
    chunks = []
    for i, name in enumerate(m.fragments):
        match = re.fullmatch(r"aws\.cluster\.x-k8s\.io/([0-9a-f-]{36})-(\d+)", name)
        assert match, name
        assert str(uuid.UUID(match.group(1))) == match.group(1)
        assert int(match.group(2)) == i
        prefixes.add(match.group(1))
        value = fake.store[name]
        assert isinstance(value, bytes)
        chunks.append(value)
    assert len(prefixes) == 1
    assert all(len(c) == 7000 for c in chunks[:-1])
    assert 1 <= len(chunks[-1]) <= 7000
    assert gzip.decompress(b"".join(chunks)) == data
    for kwargs in fake.ops("create_secret"):
        assert isinstance(kwargs["SecretBinary"], bytes)
        assert "SecretString" not in kwargs


# --- tags and KMS --------------------------------------------------------------------------


def test_tags_carry_capa_role_name_and_expiry() -> None:
    fake = FakeSecrets()
    cfg = SealConfig(region="eu-west-1", ttl_seconds=7200, tags=(("team", "blue"),))
    do_seal(b"x", fake, cfg, machine="m9", cluster="prod", role="control-plane")
    tags = tags_of(fake)
    assert tags["sigs.k8s.io/cluster-api-provider-aws/cluster/prod"] == "owned"
    assert tags["sigs.k8s.io/cluster-api-provider-aws/role"] == "control-plane"
    assert tags["Name"] == "m9"
    assert tags["team"] == "blue"
    expires = datetime.datetime.fromisoformat(tags["sealboot.io/expires-at"].replace("Z", "+00:00"))
    assert expires.tzinfo is not None
    assert expires.timestamp() == pytest.approx(WALL + 7200, abs=1)


def test_every_fragment_gets_the_same_tags() -> None:
    fake = FakeSecrets()
    do_seal(os.urandom(150 * 1024), fake)
    assert tags_of(fake, 0) == tags_of(fake, 1) == tags_of(fake, 2)


@pytest.mark.parametrize(
    "key",
    [
        "Name",
        "aws:createdBy",
        "sealboot.io/expires-at",
        "sealboot.io/anything",
        "sigs.k8s.io/cluster-api-provider-aws/role",
        "sigs.k8s.io/cluster-api-provider-aws/cluster/other",
    ],
)
def test_reserved_user_tags_are_refused_before_any_call(key: str) -> None:
    fake = FakeSecrets()
    with pytest.raises(InputError, match="cannot be overridden"):
        do_seal(b"x", fake, SealConfig(region="eu-west-1", tags=((key, "v"),)))
    assert fake.calls == []


def test_kms_key_is_passed_only_when_set() -> None:
    fake = FakeSecrets()
    do_seal(b"x", fake)
    assert "KmsKeyId" not in fake.ops("create_secret")[0]
    fake = FakeSecrets()
    do_seal(b"x", fake, SealConfig(region="eu-west-1", kms_key_id="alias/sealboot"))
    assert fake.ops("create_secret")[0]["KmsKeyId"] == "alias/sealboot"


@pytest.mark.parametrize("ttl", [59, 30 * 86400 + 1])
def test_ttl_out_of_range_is_refused(ttl: int) -> None:
    fake = FakeSecrets()
    with pytest.raises(InputError, match="expiry"):
        do_seal(b"x", fake, SealConfig(region="eu-west-1", ttl_seconds=ttl))
    assert fake.calls == []


# --- refusals before any call --------------------------------------------------------------


@pytest.mark.parametrize("hostile", ["$(reboot)", "a'b", "a b", "a/b", "", "..", "`id`"])
@pytest.mark.parametrize("fmt", ["native", "capa"])
def test_hostile_machine_names_are_refused_before_any_create(hostile: str, fmt: str) -> None:
    fake = FakeSecrets()
    with pytest.raises(InputError) as info:
        do_seal(b"x", fake, SealConfig(region="eu-west-1", format=fmt), machine=hostile)
    assert "machine" in info.value.message
    assert info.value.exit_code == 2
    assert fake.calls == []


@pytest.mark.parametrize("field", ["cluster", "namespace", "role"])
def test_hostile_other_components_are_refused(field: str) -> None:
    fake = FakeSecrets()
    kwargs = {field: "$(reboot)"}
    with pytest.raises(InputError, match=field):
        do_seal(b"x", fake, **kwargs)  # type: ignore[arg-type]
    assert fake.calls == []


def test_machine_name_with_trailing_newline_is_refused_in_capa_format() -> None:
    fake = FakeSecrets()
    with pytest.raises(InputError):
        do_seal(b"x", fake, SealConfig(region="eu-west-1", format="capa"), machine="m1\n")
    assert fake.calls == []


def test_bad_endpoint_is_refused() -> None:
    fake = FakeSecrets()
    with pytest.raises(InputError, match="endpoint"):
        do_seal(b"x", fake, SealConfig(region="eu-west-1", endpoint_url="localhost:4566"))
    assert fake.calls == []


def test_unknown_format_is_refused() -> None:
    with pytest.raises(InputError, match="format"):
        do_seal(b"x", FakeSecrets(), SealConfig(region="eu-west-1", format="zip"))


def test_over_long_cluster_for_the_capa_tag_is_refused() -> None:
    fake = FakeSecrets()
    # 96 characters survive name shortening but break the 128-character tag key limit.
    with pytest.raises(InputError, match="tag"):
        do_seal(b"x", fake, cluster="c" * 96)
    assert fake.calls == []


# --- failures undo their own work ----------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "error_type", "exit_code"),
    [
        ("ThrottlingException", AwsError, 4),
        ("InternalServiceError", AwsError, 4),
        ("AccessDeniedException", AccessDenied, 5),
    ],
)
def test_failure_on_second_create_removes_the_first(
    code: str, error_type: type[AwsError], exit_code: int
) -> None:
    fake = FakeSecrets()
    fake.create_script = [None, client_error(code, "rate exceeded", "CreateSecret", "req-42")]
    with pytest.raises(error_type) as info:
        do_seal(os.urandom(150 * 1024), fake)
    err = info.value
    assert type(err) is error_type
    assert err.exit_code == exit_code
    creates = fake.ops("create_secret")
    assert len(creates) == 2
    first, second = creates[0]["Name"], creates[1]["Name"]
    deletes = fake.ops("delete_secret")
    assert [d["SecretId"] for d in deletes] == [first]
    assert deletes[0]["ForceDeleteWithoutRecovery"] is True
    assert fake.store == {}
    msg = err.message
    assert code in msg
    assert second in msg
    assert "req-42" in msg
    assert err.outcome == "1 fragment(s) were created and removed again; nothing is left in AWS"


def test_failure_on_third_create_removes_both_earlier_fragments() -> None:
    fake = FakeSecrets()
    fake.create_script = [None, None, client_error("ThrottlingException")]
    with pytest.raises(AwsError) as info:
        do_seal(os.urandom(150 * 1024), fake)
    names = [c["Name"] for c in fake.ops("create_secret")]
    assert len(names) == 3
    assert sorted(d["SecretId"] for d in fake.ops("delete_secret")) == sorted(names[:2])
    assert fake.store == {}
    assert info.value.outcome is not None
    assert info.value.outcome.startswith("2 fragment(s) were created and removed again")


def test_failed_undo_names_the_fragment_left_behind() -> None:
    fake = FakeSecrets()
    fake.create_script = [None, client_error("ThrottlingException")]
    real_create = fake.create_secret

    def create_and_block_delete(**kwargs: object) -> dict[str, object]:
        out = real_create(**kwargs)
        # Whatever this run creates cannot be deleted again (e.g. no DeleteSecret permission).
        fake.delete_errors[str(kwargs["Name"])] = client_error("AccessDeniedException")
        return out

    fake.create_secret = create_and_block_delete  # type: ignore[method-assign]
    with pytest.raises(AwsError) as info:
        do_seal(os.urandom(150 * 1024), fake)
    (left,) = fake.store
    assert [d["SecretId"] for d in fake.ops("delete_secret")] == [left]
    assert "ThrottlingException" in info.value.message
    advice = info.value.advice
    assert left in advice
    assert "could NOT be removed" in advice
    # No manifest exists, so the way out must not need one.
    assert "'sealboot delete' cannot find them" in advice
    assert "aws secretsmanager delete-secret --force-delete-without-recovery" in advice


def _exists_after_creating(fake: FakeSecrets) -> None:
    """The first create happens but its answer is lost; botocore's retry is told it exists."""
    real_create = fake.create_secret

    def create(**kwargs: Any) -> dict[str, Any]:
        if not fake.ops("create_secret"):
            real_create(**kwargs)
            fake.calls.append(("create_secret", kwargs))
            raise client_error("ResourceExistsException", "exists", "CreateSecret")
        return real_create(**kwargs)

    fake.create_secret = create  # type: ignore[method-assign]


def test_resource_exists_on_a_fresh_name_is_this_calls_own_create() -> None:
    fake = FakeSecrets()
    _exists_after_creating(fake)
    m = do_seal(b"#cloud-config\n", fake)
    assert m.fragments[0] in fake.store, "kept: the retried attempt's first try made it"
    assert len(fake.ops("create_secret")) == 2
    assert fake.ops("delete_secret") == [], "no force-delete, no re-create, no backoff"


def test_resource_exists_then_a_failure_undoes_that_fragment_too() -> None:
    fake = FakeSecrets()
    _exists_after_creating(fake)
    fake.create_script = [None, None, client_error("ThrottlingException")]
    with pytest.raises(AwsError) as info:
        do_seal(os.urandom(150 * 1024), fake)
    assert fake.store == {}
    assert info.value.outcome is not None
    assert info.value.outcome.startswith("2 fragment(s) were created and removed again")


def test_too_many_fragments_is_refused_without_leaving_secrets() -> None:
    fake = FakeSecrets()
    data = os.urandom(7_300_000)  # incompressible: > 1024 chunks of 7000 bytes
    with pytest.raises(SealbootError):
        do_seal(data, fake, SealConfig(region="eu-west-1", format="capa"))
    assert fake.store == {}


# --- hostile input: refused before anything is created, with exit 2 ---------------------------


@pytest.mark.parametrize("region", ["eu-west-\u0661", "eu-west-\uff11", "local", "eu west 1"])
def test_bad_region_is_refused_before_any_call(region: str) -> None:
    fake = FakeSecrets()
    with pytest.raises(InputError, match="region"):
        do_seal(b"x", fake, SealConfig(region=region))
    assert fake.calls == []


def test_bad_region_of_the_client_is_refused_before_any_call() -> None:
    # The manifest is built (and checked) before the first create, not after the last.
    fake = FakeSecrets(region="not-a-region")
    with pytest.raises(InputError, match="region"):
        do_seal(b"x", fake, SealConfig(region=None))
    assert fake.calls == []
    assert fake.store == {}


def test_sealed_manifests_pass_the_agents_scope_check() -> None:
    do_seal(os.urandom(150_000), FakeSecrets()).check_scope()
    do_seal(b"x", FakeSecrets(), machine="m" * 200).check_scope()
    do_seal(b"x", FakeSecrets(), SealConfig(region="eu-west-1", format="capa")).check_scope()


# --- the toolkit CLI on hostile files ---------------------------------------------------------


def toolkit(argv: list[str], env: dict[str, str] | None = None) -> tuple[int, str, str]:
    from sealboot.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = main(argv, env or {}, stdin=io.StringIO(""), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def deletes(monkeypatch: pytest.MonkeyPatch) -> list[Manifest]:
    """Calls of sealboot.delete.delete, which would reach AWS."""
    # The package's own "delete" (the function) hides the module of that name.
    module = importlib.import_module("sealboot.delete")
    calls: list[Manifest] = []

    def record(manifest: Manifest, **kwargs: Any) -> list[str]:
        calls.append(manifest)
        return list(manifest.fragments)

    monkeypatch.setattr(module, "delete", record)
    return calls


def sealed_json() -> str:
    return do_seal(b"#cloud-config\n", FakeSecrets()).to_json()


def test_delete_of_a_sealed_manifest_still_works(tmp_path: Path, deletes: list[Manifest]) -> None:
    path = tmp_path / "m.json"
    path.write_text(sealed_json())
    code, _, err = toolkit(["delete", str(path), "--region", "eu-west-1"])
    assert code == 0, err
    assert len(deletes) == 1


@pytest.mark.parametrize("command", ["delete", "render"])
def test_deeply_nested_manifest_exits_2(
    command: str, tmp_path: Path, deletes: list[Manifest]
) -> None:
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000)
    code, _, err = toolkit([command, str(path)])
    assert code == 2
    assert "nested too deeply" in err
    assert deletes == []


def test_manifest_over_the_cap_exits_2(tmp_path: Path, deletes: list[Manifest]) -> None:
    path = tmp_path / "big.json"
    text = sealed_json()
    path.write_text(text[:-1] + " " * MANIFEST_MAX_BYTES + "}")  # valid JSON, too large
    code, _, err = toolkit(["delete", str(path)])
    assert code == 2
    assert f"over {MANIFEST_MAX_BYTES} bytes" in err
    assert deletes == []


def test_delete_refuses_another_machines_fragment(tmp_path: Path, deletes: list[Manifest]) -> None:
    data = json.loads(sealed_json())
    victim = do_seal(b"x", FakeSecrets(), machine="victim").fragments[0]
    data["fragments"].append(victim)
    path = tmp_path / "tampered.json"
    path.write_text(json.dumps(data))
    code, _, err = toolkit(["delete", str(path)])
    assert code == 2
    assert victim in err
    assert deletes == []


@pytest.mark.parametrize(
    ("flag", "value"), [("--region", "eu-west-\u0661"), ("--endpoint-url", "http://[::1")]
)
def test_delete_refuses_a_bad_region_or_endpoint(
    flag: str, value: str, tmp_path: Path, deletes: list[Manifest]
) -> None:
    path = tmp_path / "m.json"
    path.write_text(sealed_json())
    code, _, err = toolkit(["delete", str(path), flag, value])
    assert code == 2, err
    assert deletes == []


@pytest.mark.parametrize(
    "argv",
    [
        ["--region", "eu-west-\u0661"],
        ["--region", "eu-west-1", "--endpoint-url", "http://[::1"],
        ["--region", "eu-west-1", "--expires-in", "\u0663\u0666\u0660\u0660"],
    ],
)
def test_seal_refuses_hostile_flags_with_exit_2(argv: list[str], tmp_path: Path) -> None:
    src = tmp_path / "ud"
    src.write_bytes(b"#cloud-config\n")
    base = ["seal", "--namespace", "n", "--cluster", "c", "--machine", "m", *argv, str(src)]
    code, out, _ = toolkit(base)
    assert code == 2
    assert out == ""


def _limited(argv: list[str], limit: int) -> subprocess.CompletedProcess[str]:
    """The toolkit's main(argv) in a child whose address space is capped at *limit* bytes."""
    probe = (
        "import resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))\n"
        "from sealboot.cli import main\n"
        f"sys.exit(main({argv!r}, {{}}))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["delete", "/dev/zero"],
        ["inspect", "/dev/zero"],
        ["seal", "--namespace", "n", "--cluster", "c", "--machine", "m", "/dev/zero"],
    ],
)
def test_reads_from_dev_zero_are_bounded(argv: list[str]) -> None:
    res = _limited(argv, 600 << 20)
    assert res.returncode == 2, res.stderr
    assert "bytes, the most this command reads" in res.stderr


def test_inspect_refuses_a_gzip_bomb(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.gz"
    squeeze = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    with open(bomb, "wb") as fh:
        zeros = bytes(1 << 20)
        for _ in range(700):  # 700 MiB of zeros in ~700 KB
            fh.write(squeeze.compress(zeros))
        fh.write(squeeze.flush())
    res = _limited(["inspect", str(bomb)], 600 << 20)
    assert res.returncode == 2, res.stderr
    assert "once gunzipped" in res.stderr


# --- issue #13: what a failed seal says it left behind ----------------------------------------


def test_a_create_that_never_left_this_machine_created_nothing() -> None:
    fake = FakeSecrets()
    fake.create_script = [NoCredentialsError()]
    with pytest.raises(AwsError) as info:
        do_seal(b"#cloud-config\n", fake)
    assert fake.ops("delete_secret") == [], "nothing to undo: no request went out"
    assert info.value.outcome == NOTHING_CREATED
    assert "removed" not in info.value.advice
    assert "sealboot delete" not in info.value.advice


@pytest.mark.parametrize("happened", [True, False])
def test_a_create_that_timed_out_is_checked_by_the_undo(happened: bool) -> None:
    fake = FakeSecrets()
    real_create = fake.create_secret

    def create_then_time_out(**kwargs: Any) -> dict[str, Any]:
        if happened:
            real_create(**kwargs)
        else:
            fake.calls.append(("create_secret", kwargs))
        raise ReadTimeoutError(endpoint_url="https://secretsmanager.example")

    fake.create_secret = create_then_time_out  # type: ignore[method-assign]
    with pytest.raises(AwsError) as info:
        do_seal(b"#cloud-config\n", fake)
    assert len(fake.ops("delete_secret")) == 1
    assert fake.store == {}
    if happened:
        assert info.value.outcome == (
            "1 fragment(s) were created and removed again; nothing is left in AWS"
        )
    else:
        assert info.value.outcome == NOTHING_CREATED


def _closes_then_refuses() -> str:
    """An endpoint that reads one request, answers nothing and is gone after that."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        listener.close()  # before the client sees the close: its retry is refused
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{port}"


def test_a_retry_refused_after_an_unanswered_attempt_may_still_have_created() -> None:
    # botocore retries inside the call: it ends with "connection refused", but the attempt
    # before it reached the endpoint and got no answer, so the fragment may exist.
    client = boto3.session.Session().client(
        "secretsmanager",
        region_name="eu-west-1",
        endpoint_url=_closes_then_refuses(),
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="secret",
        config=Config(
            retries={"mode": "standard", "max_attempts": 1}, connect_timeout=2, read_timeout=2
        ),
    )
    with pytest.raises(AwsError) as info:
        seal(b"#cloud-config\n", namespace="n", cluster="c", machine="m", config=CFG, client=client)
    assert "Could not connect" in info.value.message
    advice = info.value.advice
    assert "may have been created" in advice
    assert "aws secretsmanager delete-secret" in advice


def test_a_refused_connection_on_every_attempt_created_nothing() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    client = boto3.session.Session().client(
        "secretsmanager",
        region_name="eu-west-1",
        endpoint_url=f"http://127.0.0.1:{port}",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="secret",
        config=Config(retries={"mode": "standard", "max_attempts": 1}, connect_timeout=2),
    )
    with pytest.raises(AwsError) as info:
        seal(b"#cloud-config\n", namespace="n", cluster="c", machine="m", config=CFG, client=client)
    assert info.value.outcome == NOTHING_CREATED


def test_ssm_fragments_left_behind_name_the_ssm_command() -> None:
    undone = Undone(backend="ssm", removed=["/a/0"], left=["/a/1"])
    text = undone.outcome()
    assert "/a/1" in text
    assert "aws ssm delete-parameter --name NAME" in text
    assert "1 other(s) were removed" in text


def test_empty_user_data_is_refused_before_any_call() -> None:
    fake = FakeSecrets()
    with pytest.raises(InputError, match="empty") as info:
        do_seal(b"", fake)
    assert info.value.exit_code == 2
    assert info.value.outcome == NOTHING_CREATED
    assert fake.calls == []


def test_advanced_tier_needs_the_ssm_backend() -> None:
    fake = FakeSecrets()
    with pytest.raises(InputError, match="ssm"):
        do_seal(b"x", fake, SealConfig(region="eu-west-1", tier="advanced"))
    assert fake.calls == []


def test_a_failed_check_creates_nothing() -> None:
    fake = FakeSecrets()

    def check(manifest: Manifest) -> None:
        raise InputError("too large to render")

    with pytest.raises(InputError) as info:
        seal(b"x", namespace="n", cluster="c", machine="m", config=CFG, client=fake, check=check)
    assert fake.calls == []
    assert info.value.outcome == NOTHING_CREATED


@pytest.mark.parametrize("failure", [InputError("cannot write out"), OSError("disk"), KeyError()])
def test_a_failed_commit_removes_every_fragment_again(failure: Exception) -> None:
    fake = FakeSecrets()

    def commit(manifest: Manifest) -> None:
        assert set(manifest.fragments) == set(fake.store)
        raise failure

    with pytest.raises(SealbootError) as info:
        seal(
            os.urandom(150 * 1024),
            namespace="n",
            cluster="c",
            machine="m",
            config=CFG,
            client=fake,
            commit=commit,
        )
    assert fake.store == {}
    assert info.value.outcome == (
        "3 fragment(s) were created and removed again; nothing is left in AWS"
    )


def test_an_interrupt_after_creating_still_removes_the_fragments() -> None:
    fake = FakeSecrets()

    def commit(manifest: Manifest) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        seal(b"x", namespace="n", cluster="c", machine="m", config=CFG, client=fake, commit=commit)
    assert fake.store == {}


@pytest.mark.parametrize(
    ("argv", "path"),
    # a manifest that is not one, user data sealboot did not render, an output nowhere
    [(["render"], "ud"), (["inspect"], "ud"), (["render", "-o", "nodir/x"], "m.json")],
)
def test_render_and_inspect_errors_mention_no_creating(
    argv: list[str], path: str, tmp_path: Path
) -> None:
    (tmp_path / "m.json").write_text(sealed_json())
    (tmp_path / "ud").write_text("#cloud-config\n")
    argv = [*argv, str(tmp_path / path)]
    argv = [a if a != "nodir/x" else str(tmp_path / a) for a in argv]
    code, _, err = toolkit(argv)
    assert code == 2, err
    assert "what to do: fix the input and run again\n" in err
    assert "creat" not in err
    assert "removed" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["--tier", "advanced"],
        ["--tier", "standard"],
        ["--tier", "advanced", "--backend", "secrets-manager"],
    ],
)
def test_seal_refuses_a_tier_without_the_ssm_backend(argv: list[str], tmp_path: Path) -> None:
    src = tmp_path / "ud"
    src.write_bytes(b"#cloud-config\n")
    base = ["seal", "--namespace", "n", "--cluster", "c", "--machine", "m", "--region", "eu-west-1"]
    code, out, err = toolkit([*base, *argv, str(src)])
    assert code == 2
    assert "--backend ssm" in err
    assert "nothing was created" in err
    assert out == ""


@pytest.mark.parametrize("insecure", [[], ["--insecure-skip-secrets-manager"]])
def test_seal_refuses_empty_user_data(insecure: list[str], tmp_path: Path) -> None:
    src = tmp_path / "empty"
    src.write_bytes(b"")
    base = ["seal", "--namespace", "n", "--cluster", "c", "--machine", "m", "--region", "eu-west-1"]
    code, out, err = toolkit([*base, *insecure, str(src)])
    assert code == 2
    assert f"{src} is empty" in err
    assert "nothing was created" in err
    assert out == ""


@pytest.mark.parametrize(
    "argv",
    [
        ["-v", "render", "M"],
        ["render", "-v", "M"],
        ["render", "M", "--verbose"],
        ["-v", "policy", "--role", "node", "-v"],
        ["sweep", "-v", "--region", "eu-west-1"],
    ],
)
def test_verbose_is_taken_before_and_after_every_command(argv: list[str]) -> None:
    from sealboot.cli import build_parser

    args = build_parser().parse_args(argv)
    assert args.verbose + getattr(args, "sub_verbose", 0) == argv.count("-v") + argv.count(
        "--verbose"
    )


def test_verbose_adds_debug_lines_to_render(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text(sealed_json())
    quiet = toolkit(["render", str(path)])
    loud = toolkit(["render", str(path), "-v"])
    assert quiet[0] == loud[0] == 0
    assert quiet[1] == loud[1], "-v changes stderr only"
    assert "debug:" not in quiet[2]
    assert "sealboot: debug: rendered manifest" in loud[2]
    assert len(loud[2].splitlines()) > len(quiet[2].splitlines())
