"""Issue #13, "First hour with sealboot": the mistakes of a first run, against moto server.

Each failure must leave AWS as the message says, and each message must fit its command: a seal
that could not write its outputs leaves no fragment, a seal that never reached AWS says nothing
was created, a delete says what is left, and -v shows where the calls went, never the secret.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.functional.conftest import (
    BIN,
    assert_no_secret,
    cloud_config,
    incompressible,
    seal,
    sealboot,
    secret_names,
)
from tests.stack.local import LocalStack


def _seal_args(stack: LocalStack, *extra: str) -> list[str]:
    return [
        "seal",
        "--namespace",
        "default",
        "--cluster",
        "c1",
        "--machine",
        "worker-0",
        "--region",
        stack.region,
        "--endpoint-url",
        stack.moto.url,
        *extra,
    ]


def _userdata(tmp_path: Path, payload: bytes | None = None) -> Path:
    src = tmp_path / "userdata.in"
    src.write_bytes(cloud_config() if payload is None else payload)
    return src


@pytest.mark.parametrize(
    "flags",
    [
        ["-o", "{tmp}/missing/userdata.mime", "--manifest-out", "{tmp}/m.json"],
        ["-o", "{tmp}/userdata.mime", "--manifest-out", "{tmp}/missing/m.json"],
        ["--manifest-out", "{tmp}/missing/m.json"],
        ["-o", "{tmp}", "--manifest-out", "{tmp}/m.json"],
        ["-o", "{tmp}/userdata.mime", "--manifest-out", "{tmp}"],
        ["-o", "{tmp}/same", "--manifest-out", "{tmp}/same"],
    ],
    ids=[
        "output-dir-missing",
        "manifest-dir-missing",
        "only-manifest",
        "output-is-dir",
        "manifest-is-dir",
        "same-file",
    ],
)
def test_an_output_that_cannot_be_written_leaves_no_fragment(
    aws: LocalStack, tmp_path: Path, flags: list[str]
) -> None:
    src = _userdata(tmp_path)
    args = [f.replace("{tmp}", str(tmp_path)) for f in flags]

    res = sealboot(aws, *_seal_args(aws, *args), str(src))

    err = res.stderr.decode()
    assert res.returncode == 2, err
    assert secret_names(aws) == [], "a fragment was left behind with no manifest naming it"
    assert "what to do: fix the input and run again; nothing was created" in err
    assert res.stdout == b""
    assert not (tmp_path / "m.json").exists()
    assert not (tmp_path / "userdata.mime").exists()


def test_a_write_that_fails_after_creating_removes_the_fragments(
    aws: LocalStack, tmp_path: Path
) -> None:
    src = _userdata(tmp_path, incompressible(70_000))
    manifest = tmp_path / "m.json"

    # /dev/full passes every check (it is writable) and then fails the write: disk full.
    res = sealboot(
        aws, *_seal_args(aws, "--manifest-out", str(manifest), "-o", "/dev/full"), str(src)
    )

    err = res.stderr.decode()
    assert res.returncode == 2, err
    assert "cannot write /dev/full" in err
    assert "2 fragment(s) were created and removed again; nothing is left in AWS" in err
    assert "nothing was created" not in err
    assert secret_names(aws) == []
    assert not manifest.exists(), "a manifest naming removed fragments was left"
    assert [p.name for p in tmp_path.iterdir()] == [src.name], "a temporary file was left"


def _create_only_keys(stack: LocalStack) -> dict[str, str]:
    """Keys of a controller that may create fragments but not delete them."""
    iam = stack.client("iam")
    iam.create_user(UserName="create-only")
    iam.put_user_policy(
        UserName="create-only",
        PolicyName="create-only",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": ["secretsmanager:CreateSecret", "secretsmanager:TagResource"],
                        "Resource": "*",
                    }
                ],
            }
        ),
    )
    key = iam.create_access_key(UserName="create-only")["AccessKey"]
    return {
        "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
    }


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "sealboot"), *args],
        env={"PATH": os.environ.get("PATH", ""), "HOME": "/nonexistent", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_rollback_that_fails_names_the_fragments_and_how_to_remove_them(
    aws: LocalStack, tmp_path: Path
) -> None:
    src = _userdata(tmp_path)
    keys = _create_only_keys(aws)
    aws.moto.enforce_iam(0)
    try:
        res = _run(keys, *_seal_args(aws, "-o", "/dev/full"), str(src))
    finally:
        aws.moto.enforce_iam(float("inf"))

    assert res.returncode == 2, res.stderr
    (left,) = secret_names(aws)
    what_to_do = res.stderr.split("what to do:", 1)[1]
    assert left in what_to_do
    assert "could NOT be removed" in what_to_do
    assert "no manifest was written, so 'sealboot delete' cannot find them" in what_to_do
    command = "aws secretsmanager delete-secret --force-delete-without-recovery --secret-id NAME"
    assert command in what_to_do
    assert "nothing was created" not in res.stderr
    # The printed name is all it takes.
    aws.secrets().delete_secret(SecretId=left, ForceDeleteWithoutRecovery=True)
    assert secret_names(aws) == []


def _no_credentials() -> dict[str, str]:
    return {
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def test_seal_without_credentials_says_nothing_was_created(aws: LocalStack, tmp_path: Path) -> None:
    src = _userdata(tmp_path)

    res = _run(_no_credentials(), *_seal_args(aws), str(src))

    assert res.returncode == 4, res.stderr
    assert "Unable to locate credentials" in res.stderr
    assert "what to do: check the credentials, region and endpoint" in res.stderr
    assert res.stderr.rstrip().endswith("; nothing was created")
    for wrong in ("could not be removed", "removed", "sealboot delete"):
        assert wrong not in res.stderr
    assert res.stdout == ""
    assert secret_names(aws) == []


def test_delete_with_a_wrong_endpoint_says_what_is_left(aws: LocalStack, tmp_path: Path) -> None:
    sealed = seal(aws, tmp_path, incompressible(70_000))

    res = sealboot(aws, "delete", str(sealed.manifest_path), "--endpoint-url", "http://127.0.0.1:9")

    err = res.stderr.decode()
    assert res.returncode == 4, err
    assert "nothing was deleted: all 2 fragment(s) are still there" in err
    assert all(name in err for name in sealed.manifest.fragments)
    assert "run the same 'sealboot delete' again" in err
    assert "created" not in err
    assert secret_names(aws) == sorted(sealed.manifest.fragments)


def test_delete_without_credentials_says_nothing_was_deleted(
    aws: LocalStack, tmp_path: Path
) -> None:
    sealed = seal(aws, tmp_path, cloud_config())

    res = _run(_no_credentials(), "delete", str(sealed.manifest_path))

    assert res.returncode == 4, res.stderr
    assert "nothing was deleted" in res.stderr
    assert "created" not in res.stderr
    assert secret_names(aws) == list(sealed.manifest.fragments)


@pytest.mark.parametrize("command", ["render", "inspect"])
def test_render_and_inspect_errors_say_nothing_about_creating(
    aws: LocalStack, tmp_path: Path, command: str
) -> None:
    src = _userdata(tmp_path)  # neither a manifest nor user data sealboot rendered

    res = sealboot(aws, command, str(src))

    err = res.stderr.decode()
    assert res.returncode == 2, err
    assert err.rstrip().endswith("what to do: fix the input and run again")
    assert "creat" not in err


@pytest.mark.parametrize("source", ["file", "stdin"])
def test_empty_user_data_is_refused(aws: LocalStack, tmp_path: Path, source: str) -> None:
    src = _userdata(tmp_path, b"")
    arg = str(src) if source == "file" else "-"

    res = sealboot(aws, *_seal_args(aws), arg, stdin=b"")

    err = res.stderr.decode()
    assert res.returncode == 2, err
    assert "is empty: there is no user data to seal" in err
    assert "nothing was created" in err
    assert res.stdout == b""
    assert secret_names(aws) == []


def test_advanced_tier_without_ssm_is_refused(aws: LocalStack, tmp_path: Path) -> None:
    src = _userdata(tmp_path)

    res = sealboot(aws, *_seal_args(aws, "--tier", "advanced"), str(src))

    err = res.stderr.decode()
    assert res.returncode == 2, err
    assert "add --backend ssm" in err
    assert secret_names(aws) == []


def test_verbose_before_and_after_the_command_shows_more_and_never_the_secret(
    aws: LocalStack, tmp_path: Path
) -> None:
    payload = cloud_config(8000)
    src = _userdata(tmp_path, payload)
    runs = {}
    for where in ("none", "before", "after"):
        out = tmp_path / f"{where}.mime"
        args = _seal_args(aws, "-o", str(out), "--manifest-out", str(tmp_path / f"{where}.json"))
        if where == "before":
            args.insert(0, "-v")
        elif where == "after":
            args.insert(1, "-v")
        res = sealboot(aws, *args, str(src))
        assert res.returncode == 0, res.stderr.decode()
        runs[where] = res.stderr.decode()
        assert_no_secret(res.stderr + res.stdout, payload)

    quiet = runs["none"]
    assert "debug:" not in quiet
    for where in ("before", "after"):
        loud = runs[where]
        assert len(loud.splitlines()) > len(quiet.splitlines())
        manifest = json.loads((tmp_path / f"{where}.json").read_text())
        (name,) = manifest["fragments"]
        debug = "\n".join(line for line in loud.splitlines() if "debug:" in line)
        assert aws.region in debug
        assert aws.moto.url in debug
        assert "credentials from env" in debug
        assert name in debug
        assert "request id" in debug
        assert " ms" in debug


def test_verbose_on_delete_shows_each_fragment_and_its_request_id(
    aws: LocalStack, tmp_path: Path
) -> None:
    sealed = seal(aws, tmp_path, cloud_config())

    res = sealboot(aws, "delete", "-v", str(sealed.manifest_path))

    err = res.stderr.decode()
    assert res.returncode == 0, err
    (name,) = sealed.manifest.fragments
    assert f"debug: deleted {name} in " in err
    assert "request id" in err
