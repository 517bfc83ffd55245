"""Unit tests of the fetch run's steps: an IMDS emulator and a scripted Secrets Manager client."""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path

import pytest

from sealboot_agent.config import AgentConfig
from sealboot_agent.errors import DeleteError, FragmentMissing, IntegrityError
from sealboot_agent.run import Deps, Done, run_fetch
from sealboot_agent.wire import (
    CAPA_FRAGMENT_SIZE,
    FORMAT_NATIVE,
    Manifest,
    gzip_deterministic,
    sha256_hex,
    split,
)
from tests.stack.imds import Identity, ImdsEmulator
from tests.unit.fakes import FakeSecrets, client_error

# Base64 of random bytes compresses like real certificates: several CAPA-sized slices.
DATA = b"#cloud-config\nbootcmd: [true]\n# " + base64.b64encode(random.Random(7).randbytes(9000))
PREFIX = "aws.cluster.x-k8s.io/0b8f2f6e"


def native(fake: FakeSecrets) -> Manifest:
    """A one-fragment native manifest whose fragment is in *fake*."""
    stream = gzip_deterministic(DATA)
    name = f"{PREFIX}/ns/c/m/Tok-0"
    fake.store[name] = stream
    return Manifest(
        backend="secrets-manager",
        format=FORMAT_NATIVE,
        fragments=(name,),
        region="eu-west-1",
        sha256=sha256_hex(stream),
        size=len(stream),
        raw_size=len(DATA),
    )


def capa(fake: FakeSecrets) -> Manifest:
    """A CAPA manifest (no digest) over as many 7000-byte slices as the stream needs."""
    chunks = split(gzip_deterministic(DATA), CAPA_FRAGMENT_SIZE)
    manifest = Manifest.capa(PREFIX, len(chunks), region="eu-west-1")
    fake.store.update(zip(manifest.fragments, chunks))
    return manifest


@pytest.fixture
def fake() -> FakeSecrets:
    return FakeSecrets()


def deny_delete(fake: FakeSecrets, manifest: Manifest) -> None:
    fake.delete_errors[manifest.fragments[0]] = client_error("AccessDeniedException")


def run(
    tmp_path: Path, imds: ImdsEmulator, fake: FakeSecrets, manifest: Manifest, **kw: object
) -> tuple[AgentConfig, Done]:
    cfg = AgentConfig(
        manifest=manifest,
        root=tmp_path,
        handoff="none",
        output="/var/lib/sealboot/userdata",
        imds_endpoint=imds.url,
        log_file=None,
        deadline=30,
        denied_grace=0,
        **kw,  # type: ignore[arg-type]
    )
    return cfg, run_fetch(cfg, Deps(client_factory=lambda **_: fake))


def test_a_run_returns_the_verified_payload(tmp_path: Path, imds: ImdsEmulator) -> None:
    fake = FakeSecrets()
    _, done = run(tmp_path, imds, fake, native(fake))
    assert done.payload == DATA


def test_a_run_writes_the_payload_and_deletes_every_fragment(
    tmp_path: Path, imds: ImdsEmulator
) -> None:
    fake = FakeSecrets()
    manifest = capa(fake)
    assert manifest.count > 1
    cfg, _ = run(tmp_path, imds, fake, manifest)
    assert cfg.path(cfg.output).read_bytes() == DATA
    assert fake.store == {}


def test_a_run_records_every_phase_and_ok(tmp_path: Path, imds: ImdsEmulator) -> None:
    fake = FakeSecrets()
    _, done = run(tmp_path, imds, fake, native(fake))
    state = done.state
    assert (state.phase, state.outcome) == ("done", "ok")
    assert state.output_sha256 == sha256_hex(DATA)
    assert state.instance_id == Identity().instance_id


def test_a_second_run_reads_nothing_and_returns_no_payload(
    tmp_path: Path, imds: ImdsEmulator
) -> None:
    fake = FakeSecrets()
    manifest = native(fake)
    run(tmp_path, imds, fake, manifest)
    fake.calls.clear()
    _, again = run(tmp_path, imds, fake, manifest)
    assert again.payload is None
    assert fake.calls == []


def test_a_resumed_run_hands_over_the_durable_copy_without_fetching(
    tmp_path: Path, imds: ImdsEmulator, fake: FakeSecrets
) -> None:
    manifest = native(fake)
    deny_delete(fake, manifest)
    with pytest.raises(DeleteError):
        run(tmp_path, imds, fake, manifest, require_delete=True)
    del fake.delete_errors[manifest.fragments[0]]
    fake.calls.clear()
    _, done = run(tmp_path, imds, fake, manifest)
    assert done.payload == DATA
    assert [op for op, _ in fake.calls] == ["delete_secret"]


def test_a_missing_fragment_fails_the_run_and_deletes_nothing(
    tmp_path: Path, imds: ImdsEmulator, fake: FakeSecrets
) -> None:
    manifest = capa(fake)
    del fake.store[manifest.fragments[1]]
    with pytest.raises(FragmentMissing):
        run(tmp_path, imds, fake, manifest)
    assert fake.ops("delete_secret") == []


def test_a_failed_run_is_recorded_in_the_state_file(tmp_path: Path, imds: ImdsEmulator) -> None:
    fake = FakeSecrets()
    manifest = native(fake)
    fake.store[manifest.fragments[0]] = b"\x1f\x8bnot really gzip"
    with pytest.raises(IntegrityError):
        run(tmp_path, imds, fake, manifest)
    state = json.loads((tmp_path / "var/lib/sealboot/state.json").read_text())
    assert (state["outcome"], state["error"]["exit_code"]) == ("failed", 6)
    assert fake.ops("delete_secret") == []


def test_a_fragment_left_behind_is_a_warning_unless_delete_is_required(
    tmp_path: Path, imds: ImdsEmulator, fake: FakeSecrets
) -> None:
    manifest = native(fake)
    deny_delete(fake, manifest)
    _, done = run(tmp_path, imds, fake, manifest)
    assert done.state.left_behind == list(manifest.fragments)
    assert done.state.outcome == "ok"
