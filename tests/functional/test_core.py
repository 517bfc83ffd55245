"""seal -> render -> boot -> agent through the real CLIs against moto server and IMDS."""

from __future__ import annotations

import gzip
import stat
from pathlib import Path

from tests.functional.conftest import (
    Instance,
    assert_no_secret,
    cloud_config,
    incompressible,
    seal,
    sealboot,
    secret_names,
)
from tests.stack.local import LocalStack


def test_boot_fetches_verifies_writes_and_deletes(instance: Instance, tmp_path: Path) -> None:
    payload = cloud_config(20_000)
    sealed = seal(instance.stack, tmp_path, payload)
    assert secret_names(instance.stack) == sorted(sealed.manifest.fragments)
    assert sealed.manifest.count == 1

    res = instance.boot(sealed.userdata_path)

    assert res.returncode == 0, instance.log
    assert instance.private.read_bytes() == payload
    assert stat.S_IMODE(instance.private.stat().st_mode) == 0o600
    assert not instance.output.exists(), "the boothook hands off to cloud-init, not a file"
    (part,) = instance.cloud_config_parts()
    assert part.read_bytes() == payload
    assert stat.S_IMODE(part.stat().st_mode) == 0o600
    assert secret_names(instance.stack) == []
    state = instance.state()
    assert state["outcome"] == "ok"
    assert state["phase"] == "done"
    assert state["instance_id"] == instance.stack.identity.instance_id


def test_rendered_userdata_holds_no_secret(aws: LocalStack, tmp_path: Path) -> None:
    payload = cloud_config(8000)
    sealed = seal(aws, tmp_path, payload)
    text = sealed.userdata_path.read_bytes()
    assert len(text) <= 16384
    assert_no_secret(text, payload)


def test_every_log_line_once_and_no_secret_at_any_verbosity(
    instance: Instance, tmp_path: Path
) -> None:
    payload = cloud_config(4000)
    sealed = seal(instance.stack, tmp_path, payload)

    res = instance.agent("fetch", "--manifest", str(sealed.manifest_path), "-vv")

    assert res.returncode == 0, res.stderr
    lines = [line for line in instance.log.splitlines() if line]
    assert any("fetched 1 fragment" in line for line in lines)
    assert any("request id" in line for line in lines), "-v adds request ids"
    assert len(lines) == len(set(lines)), "a log line appears twice"
    assert res.stderr.splitlines() == lines, "stderr and the log file carry the same lines once"
    assert_no_secret(instance.all_text(), payload)
    assert_no_secret(res.stderr + res.stdout, payload)


def test_boothook_log_lines_appear_exactly_once(instance: Instance, tmp_path: Path) -> None:
    sealed = seal(instance.stack, tmp_path, cloud_config())

    res = instance.boot(sealed.userdata_path)

    assert res.returncode == 0
    assert res.stdout == res.stderr == "", "the boothook's own output goes only to the log"
    lines = [line for line in instance.log.splitlines() if line]
    assert len(lines) >= 5
    assert len(lines) == len(set(lines))
    assert all(" sealboot-agent[" in line for line in lines)


def test_second_boot_is_a_noop_with_no_network(instance: Instance, tmp_path: Path) -> None:
    sealed = seal(instance.stack, tmp_path, cloud_config())
    assert instance.boot(sealed.userdata_path).returncode == 0
    hits = len(instance.stack.imds.hits)
    state_before = instance.state()

    again = instance.boot(sealed.userdata_path)
    direct = instance.agent("fetch", "--manifest", str(sealed.manifest_path))

    assert again.returncode == 0
    assert direct.returncode == 0, direct.stderr
    assert "nothing to do" in instance.log.splitlines()[-1]
    assert len(instance.stack.imds.hits) == hits, "a rerun must not touch IMDS (or AWS)"
    assert instance.state() == state_before


def test_multi_fragment_payload_round_trips(instance: Instance, tmp_path: Path) -> None:
    payload = incompressible(150_000)
    sealed = seal(instance.stack, tmp_path, payload)
    assert sealed.manifest.count == 3

    res = instance.agent("fetch", "--manifest", str(sealed.manifest_path))

    assert res.returncode == 0, res.stderr
    assert instance.output.read_bytes() == payload
    assert secret_names(instance.stack) == []


def test_status_reports_phases(instance: Instance, tmp_path: Path) -> None:
    sealed = seal(instance.stack, tmp_path, cloud_config())
    never = instance.agent("status", "--root", str(instance.root))
    assert "has not run" in never.stdout
    assert instance.agent("fetch", "--manifest", str(sealed.manifest_path)).returncode == 0

    res = instance.agent("status", "--root", str(instance.root))

    assert res.returncode == 0
    assert "outcome:   ok" in res.stdout
    for phase in ("started", "credentials", "fetched", "verified", "written", "deleted", "done"):
        assert phase in res.stdout
    assert sealed.manifest.fragments[0] in res.stdout


def test_handoff_none_keeps_user_data_private(instance: Instance, tmp_path: Path) -> None:
    payload = cloud_config()
    sealed = seal(instance.stack, tmp_path, payload)

    res = instance.agent("fetch", "--manifest", str(sealed.manifest_path), "--handoff", "none")

    assert res.returncode == 0, res.stderr
    assert not instance.output.exists()
    private = instance.root / "var/lib/sealboot/userdata"
    assert private.read_bytes() == payload
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_inspect_reads_back_the_manifest(aws: LocalStack, tmp_path: Path) -> None:
    sealed = seal(aws, tmp_path, cloud_config())

    res = sealboot(aws, "inspect", str(sealed.userdata_path))

    assert res.returncode == 0
    from sealboot_agent.wire import Manifest

    assert Manifest.from_json(res.stdout.decode()) == sealed.manifest


def test_render_reproduces_the_sealed_userdata(aws: LocalStack, tmp_path: Path) -> None:
    sealed = seal(aws, tmp_path, cloud_config())
    out = tmp_path / "again.mime"

    res = sealboot(aws, "render", str(sealed.manifest_path), "-o", str(out))

    assert res.returncode == 0
    assert out.read_bytes() == sealed.userdata_path.read_bytes()


def test_delete_is_idempotent(aws: LocalStack, tmp_path: Path) -> None:
    sealed = seal(aws, tmp_path, incompressible(70_000))
    assert len(secret_names(aws)) == 2

    first = sealboot(aws, "delete", str(sealed.manifest_path))
    second = sealboot(aws, "delete", str(sealed.manifest_path))

    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert secret_names(aws) == []


def test_seal_tags_every_fragment(aws: LocalStack, tmp_path: Path) -> None:
    sealed = seal(aws, tmp_path, incompressible(70_000), "--tag", "team=platform")

    for name in sealed.manifest.fragments:
        tags = {t["Key"]: t["Value"] for t in aws.secrets().describe_secret(SecretId=name)["Tags"]}
        assert tags["sigs.k8s.io/cluster-api-provider-aws/cluster/c1"] == "owned"
        assert tags["sigs.k8s.io/cluster-api-provider-aws/role"] == "node"
        assert tags["Name"] == "worker-0"
        assert tags["team"] == "platform"
        assert tags["sealboot.io/expires-at"].endswith("Z")


def test_seal_from_stdin(aws: LocalStack, tmp_path: Path) -> None:
    payload = cloud_config()
    res = sealboot(
        aws,
        "seal",
        "--namespace",
        "ns",
        "--cluster",
        "c",
        "--machine",
        "m",
        "--region",
        aws.region,
        "--endpoint-url",
        aws.moto.url,
        "-",
        stdin=payload,
    )
    assert res.returncode == 0, res.stderr
    assert b"text/cloud-boothook" in gzip.decompress(res.stdout)  # gzipped: it carries code
    assert_no_secret(res.stdout + res.stderr, payload)
